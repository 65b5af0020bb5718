//! Issue 11's targets, each set against the median figure of this run that it names.

use crate::flow::FlowSection;
use crate::report::{Report, Target};

/// Which way a target points.
enum Bound {
    AtLeast(f64),
    Below(f64),
}

fn target(what: &str, measured: Option<f64>, bound: Bound, unit: &str) -> Target {
    let (shown, verdict) = match measured {
        Some(value) => {
            let met = match bound {
                Bound::AtLeast(limit) => value >= limit,
                Bound::Below(limit) => value < limit,
            };
            (
                shown(value, &bound, unit),
                if met { "met" } else { "missed" }.to_owned(),
            )
        }
        None => ("-".to_owned(), "not measured".to_owned()),
    };
    let target = match bound {
        Bound::AtLeast(limit) => format!(">= {limit:.2}{unit}"),
        Bound::Below(limit) => format!("< {limit:.2}{unit}"),
    };
    Target {
        what: what.to_owned(),
        measured: shown,
        target,
        verdict,
    }
}

/// `value` to two places, or to four where two would show it on the bound itself (0.7996
/// against at least 0.80), so that a reader sees why the verdict went the way it did.
fn shown(value: f64, bound: &Bound, unit: &str) -> String {
    let limit = match bound {
        Bound::AtLeast(limit) | Bound::Below(limit) => *limit,
    };
    if format!("{value:.2}") == format!("{limit:.2}") && value != limit {
        format!("{value:.4}{unit}")
    } else {
        format!("{value:.2}{unit}")
    }
}

fn cell_ratio(report: &Report, batch: usize, clients: usize) -> Option<f64> {
    report
        .hops
        .iter()
        .find(|c| c.batch == batch && c.clients == clients)
        .and_then(|c| c.ratio)
        .map(|r| r.median)
}

/// The targets against `report`'s figures.
pub fn evaluate(report: &Report) -> Vec<Target> {
    let latency = report.wakeups.latency.as_ref();
    let flow_ratio = match &report.order_flow {
        FlowSection::Ran(flow) => flow.ratio,
        FlowSection::Skipped { .. } => None,
    };
    vec![
        target(
            "b1 c16 / its ceiling",
            cell_ratio(report, 1, 16),
            Bound::AtLeast(0.8),
            "",
        ),
        target(
            "b10 c4 / its ceiling",
            cell_ratio(report, 10, 4),
            Bound::AtLeast(0.8),
            "",
        ),
        target(
            "best hop / pgmq's best",
            report
                .best_vs_pgmq
                .as_ref()
                .and_then(|b| b.ratio)
                .map(|r| r.median),
            Bound::AtLeast(6.0),
            "",
        ),
        target(
            "idle wake-up p50",
            latency.map(|l| l.p50_ms),
            Bound::Below(2.0),
            " ms",
        ),
        target(
            "idle wake-up p99",
            latency.map(|l| l.p99_ms),
            Bound::Below(10.0),
            " ms",
        ),
        target(
            "wake-ups on / poll-only",
            report.wakeups.ratio.map(|r| r.median),
            Bound::AtLeast(0.9),
            "",
        ),
        target(
            "flow hops / b1 c16 ceiling",
            flow_ratio,
            Bound::AtLeast(0.6),
            "",
        ),
        target(
            "soak last / first window",
            report.soak.as_ref().map(|s| s.ratio),
            Bound::AtLeast(0.95),
            "",
        ),
        target(
            "endpoint peak RSS",
            report.memory.as_ref().map(|m| m.peak_rss_mb),
            Bound::Below(30.0),
            " MB",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_bound() {
        assert_eq!(
            target("x", Some(0.85), Bound::AtLeast(0.8), "").verdict,
            "met"
        );
        assert_eq!(
            target("x", Some(0.75), Bound::AtLeast(0.8), "").verdict,
            "missed"
        );
        assert_eq!(
            target("x", Some(2.0), Bound::Below(2.0), " ms").verdict,
            "missed"
        );
        assert_eq!(
            target("x", None, Bound::Below(2.0), "").verdict,
            "not measured"
        );
    }

    #[test]
    fn a_figure_that_rounds_onto_its_bound_shows_more_places() {
        let cases = [
            (0.79897, Bound::AtLeast(0.8), "", "0.7990", "missed"),
            (0.80312, Bound::AtLeast(0.8), "", "0.8031", "met"),
            (0.8, Bound::AtLeast(0.8), "", "0.80", "met"),
            (0.8512, Bound::AtLeast(0.8), "", "0.85", "met"),
            (1.996, Bound::Below(2.0), " ms", "1.9960 ms", "met"),
        ];
        for (value, bound, unit, shown, verdict) in cases {
            let t = target("x", Some(value), bound, unit);
            assert_eq!(
                (t.measured.as_str(), t.verdict.as_str()),
                (shown, verdict),
                "{value}"
            );
        }
    }
}
