//! How values are shown to people and read from them: ages, durations, times, short text.

use std::time::{Duration, SystemTime};

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

/// `in 5m00s` for a due time ahead, `overdue by 3s` for one passed.
pub fn due(seconds: f64) -> String {
    if seconds >= 0.0 {
        format!("in {}", span(seconds))
    } else {
        format!("overdue by {}", span(-seconds))
    }
}

/// A point in time as RFC 3339 in UTC with milliseconds.
pub fn time(at: SystemTime) -> String {
    transport_pg::format_rfc3339(at)
}

/// An error kind short enough for a table column: a Rust path such as
/// `transport_pg::error::Error::EndpointNotInstalled` keeps its last two segments
/// (`Error::EndpointNotInstalled`); `errors show` and `--json` give the whole kind.
pub fn short_kind(kind: &str) -> String {
    let segments: Vec<&str> = kind.split("::").collect();
    match segments.len() {
        0..=2 => kind.to_owned(),
        n => segments[n - 2..].join("::"),
    }
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

/// Reads a duration such as `30s`, `5m`, `2h`, `1d` or `1h30m`; a bare number is refused,
/// because minutes and seconds are both plausible and the wrong guess is costly.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("a duration cannot be empty; use e.g. 30s, 5m, 2h or 1d".to_owned());
    }

    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "{text:?} is not a duration: expected a number before {rest:?}"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?} is not a duration: the number is too large"))?;
        rest = &rest[digits..];

        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds_per = match &rest[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "" => {
                return Err(format!(
                    "{text:?} has no unit: write e.g. {number}s, {number}m, {number}h or {number}d"
                ));
            }
            other => {
                return Err(format!(
                    "{text:?} is not a duration: unknown unit {other:?} (use s, m, h or d)"
                ));
            }
        };
        let part = number
            .checked_mul(seconds_per)
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
        total = total
            .checked_add(Duration::from_secs(part))
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{parse_duration, short_kind, span, truncate};

    #[test]
    fn reads_durations_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
    }

    #[test]
    fn refuses_durations_without_a_known_unit() {
        for bad in ["", "30", "5x", "m", "1.5h", "-5m", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

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
    fn error_kinds_keep_their_last_two_segments() {
        assert_eq!(
            short_kind("transport_pg::error::Error::EndpointNotInstalled"),
            "Error::EndpointNotInstalled"
        );
        assert_eq!(short_kind("panic"), "panic");
        assert_eq!(short_kind("io::Error"), "io::Error");
    }

    #[test]
    fn truncates_on_characters() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ääääää", 4), "äää…");
    }
}
