//! How values are shown to people and read from them: ages, durations, times, short text.

use std::time::SystemTime;

/// An age or a span in seconds, short: `850ms`, `42s`, `3m12s`, `2h05m`, `3d04h`.
/// Negative spans (a due time in the future seen as an age) are shown as `-` prefixed.
pub fn span(seconds: f64) -> String {
    if seconds.is_nan() {
        return "-".to_owned();
    }
    if seconds < 0.0 {
        return format!("-{}", span(-seconds));
    }
    if seconds < 1.0 {
        return format!("{}ms", (seconds * 1000.0).round() as u64);
    }
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m{:02}s", s / 60, s % 60),
        3_600..86_400 => format!("{}h{:02}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// An optional span, `-` when there is none.
pub fn span_or_dash(seconds: Option<f64>) -> String {
    seconds.map(span).unwrap_or_else(|| "-".to_owned())
}

/// A point in time as RFC 3339 in UTC with milliseconds.
pub fn time(at: SystemTime) -> String {
    transport_pg::format_rfc3339(at)
}

/// `text` cut to at most `max` characters, with `…` marking the cut.
pub fn truncate(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::{span, truncate};

    #[test]
    fn shows_spans_briefly() {
        assert_eq!(span(0.25), "250ms");
        assert_eq!(span(42.2), "42s");
        assert_eq!(span(192.0), "3m12s");
        assert_eq!(span(7_500.0), "2h05m");
        assert_eq!(span(273_600.0), "3d04h");
        assert_eq!(span(-90.0), "-1m30s");
    }

    #[test]
    fn truncates_on_characters() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ääääää", 4), "äää…");
    }
}
