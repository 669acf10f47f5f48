//! The dashboard's chart, drawn on the server as SVG: requests received per day (bars) and the
//! median time to completion of that day's requests (line). No script, no chart library.

use chrono::NaiveDate;
use maud::{Markup, html};

/// One day of the chart.
#[derive(Debug, Clone)]
pub struct Day {
    /// The day (UTC).
    pub day: NaiveDate,
    /// Requests received.
    pub received: i64,
    /// Median seconds from receipt to completion of the day's completed requests.
    pub median_secs: Option<f64>,
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 40.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 16.0;

/// "1.2 s", "4 min", "3.5 h".
pub fn duration_label(secs: f64) -> String {
    if secs < 90.0 {
        format!("{secs:.1} s")
    } else if secs < 5400.0 {
        format!("{:.0} min", secs / 60.0)
    } else if secs < 172_800.0 {
        format!("{:.1} h", secs / 3600.0)
    } else {
        format!("{:.1} d", secs / 86_400.0)
    }
}

/// The chart of `days`.
pub fn render(days: &[Day]) -> Markup {
    let max_count = days.iter().map(|d| d.received).max().unwrap_or(0).max(1) as f64;
    let max_median = days
        .iter()
        .filter_map(|d| d.median_secs)
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let plot_w = WIDTH - LEFT - 10.0;
    let plot_h = HEIGHT - BOTTOM - TOP;
    let slot = plot_w / days.len().max(1) as f64;
    let points: Vec<String> = days
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            d.median_secs.map(|m| {
                let x = LEFT + slot * (i as f64 + 0.5);
                let y = TOP + plot_h - m / max_median * plot_h;
                format!("{x:.1},{y:.1}")
            })
        })
        .collect();
    html! {
        svg.chart #chart viewBox={"0 0 " (WIDTH) " " (HEIGHT)} role="img"
            aria-label="Requests per day and median time to completion, last 30 days" {
            text x="2" y="12" { (max_count as i64) }
            text x="2" y=(TOP + plot_h) { "0" }
            text x=(WIDTH - 160.0) y="12" { "median max " (duration_label(max_median)) }
            @for (i, d) in days.iter().enumerate() {
                @let h = d.received as f64 / max_count * plot_h;
                rect.bar x=(format!("{:.1}", LEFT + slot * i as f64 + 1.0)) y=(format!("{:.1}", TOP + plot_h - h))
                    width=(format!("{:.1}", (slot - 2.0).max(1.0))) height=(format!("{h:.1}")) {
                    title { (d.day) ": " (d.received) " received"
                        @if let Some(m) = d.median_secs { ", median " (duration_label(m)) } }
                }
                @if i % 5 == 0 {
                    text x=(format!("{:.1}", LEFT + slot * i as f64)) y=(HEIGHT - 6.0) { (d.day.format("%m-%d")) }
                }
            }
            @if points.len() > 1 {
                polyline.line points=(points.join(" ")) {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_has_a_bar_per_day() {
        let days: Vec<Day> = (1..=3)
            .map(|i| Day {
                day: NaiveDate::from_ymd_opt(2026, 1, i).unwrap(),
                received: i as i64,
                median_secs: Some(10.0 * i as f64),
            })
            .collect();
        let svg = render(&days).into_string();
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains("polyline"));
        assert_eq!(duration_label(7200.0), "2.0 h");
    }
}
