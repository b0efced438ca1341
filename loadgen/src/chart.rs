//! Charts next to a JSON report, as SVG (plotters' SVG backend needs no system fonts):
//!
//! - `<report>.latency-cdf.svg`: the publish→CHANGED latency CDF of every phase that carries an
//!   HDR histogram (`latency_hist`, HdrHistogram V2, base64), one line each, log latency axis;
//! - `<report>.memory.svg`: gateway memory per connection (RSS and heap) against the connection
//!   count, from every list of steps with `connections` and `rss_per_conn` (the `idle` report).
//!
//! The reports are read as plain JSON, so any report with those fields gets the charts
//! (`herald-loadgen chart REPORT.json`); `idle` and `fanout` draw them after writing `--json`.

use crate::receive::decode_histogram;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Arguments of `chart`.
#[derive(Debug, clap::Args)]
pub(crate) struct ChartArgs {
    /// JSON reports written by `idle --json` or `fanout --json` (or any with the same fields).
    #[arg(required = true)]
    reports: Vec<PathBuf>,
}

pub(crate) fn run(args: &ChartArgs) -> anyhow::Result<()> {
    for report in &args.reports {
        let charts = write_charts(report)?;
        if charts.is_empty() {
            println!("{}: nothing to chart", report.display());
        }
        for chart in charts {
            println!("chart written to {}", chart.display());
        }
    }
    Ok(())
}

/// One line of the memory chart: (connections, bytes per connection).
type Points = Vec<(f64, f64)>;

/// Writes every chart `report` has data for, next to it; returns their paths.
pub(crate) fn write_charts(report: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(report)?)?;
    let mut hists = Vec::new();
    let mut steps = Vec::new();
    walk(&json, "", &mut hists, &mut steps)?;
    let mut out = Vec::new();
    if !hists.is_empty() {
        let path = sibling(report, "latency-cdf.svg");
        latency_cdf(&path, &hists)?;
        out.push(path);
    }
    if !steps.is_empty() {
        let path = sibling(report, "memory.svg");
        memory(&path, &steps)?;
        out.push(path);
    }
    Ok(out)
}

/// `dir/name.json` → `dir/name.<suffix>`.
fn sibling(report: &Path, suffix: &str) -> PathBuf {
    let stem = report
        .file_stem()
        .map_or_else(|| "report".into(), |s| s.to_string_lossy().into_owned());
    report.with_file_name(format!("{stem}.{suffix}"))
}

/// Collects latency histograms (labelled by the `path`/`phase`/`target` fields on the way down)
/// and memory steps (labelled the same way) from anywhere in the report.
fn walk(
    v: &Value,
    label: &str,
    hists: &mut Vec<(String, Histogram<u64>)>,
    steps: &mut Vec<(String, Points, Points)>,
) -> anyhow::Result<()> {
    match v {
        Value::Object(map) => {
            let mut label = label.to_owned();
            for key in ["target", "path", "phase"] {
                if let Some(Value::String(s)) = map.get(key) {
                    if !label.is_empty() {
                        label.push(' ');
                    }
                    label.push_str(s);
                }
            }
            if let Some(Value::String(h)) = map.get("latency_hist") {
                let hist = decode_histogram(h)?;
                if !hist.is_empty() {
                    let name = if label.is_empty() { "latency" } else { &label };
                    hists.push((name.to_owned(), hist));
                }
            }
            for (key, child) in map {
                if let Value::Array(items) = child
                    && let Some((rss, heap)) = memory_steps(items)
                {
                    let name = if label.is_empty() {
                        key.as_str()
                    } else {
                        &label
                    };
                    steps.push((name.to_owned(), rss, heap));
                    continue;
                }
                walk(child, &label, hists, steps)?;
            }
        }
        Value::Array(items) => {
            if let Some((rss, heap)) = memory_steps(items) {
                steps.push((label.to_owned(), rss, heap));
                return Ok(());
            }
            for item in items {
                walk(item, label, hists, steps)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `[{connections, rss_per_conn, heap_per_conn?}, …]` as RSS and heap points.
fn memory_steps(items: &[Value]) -> Option<(Points, Points)> {
    let mut rss = Vec::new();
    let mut heap = Vec::new();
    for item in items {
        let conns = item.get("connections")?.as_f64()?;
        rss.push((conns, item.get("rss_per_conn")?.as_f64()?));
        if let Some(h) = item.get("heap_per_conn").and_then(Value::as_f64) {
            heap.push((conns, h));
        }
    }
    (!rss.is_empty()).then_some((rss, heap))
}

const COLORS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

fn latency_cdf(path: &Path, hists: &[(String, Histogram<u64>)]) -> anyhow::Result<()> {
    let max = hists
        .iter()
        .map(|(_, h)| h.max())
        .max()
        .unwrap_or(1)
        .max(10) as f64;
    let min = hists.iter().map(|(_, h)| h.min()).min().unwrap_or(1).max(1) as f64;
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("publish → CHANGED latency, CDF", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((min * 0.9..max * 1.1).log_scale(), 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("latency (µs, log scale)")
        .y_desc("fraction of deliveries at or below")
        .draw()?;
    for (i, (name, h)) in hists.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let total = h.len() as f64;
        let mut seen = 0u64;
        let points: Vec<(f64, f64)> = h
            .iter_recorded()
            .map(|v| {
                seen += v.count_at_value();
                (
                    (h.highest_equivalent(v.value_iterated_to()) as f64).max(min),
                    seen as f64 / total,
                )
            })
            .collect();
        let label = format!(
            "{name}: p50 {} µs, p99 {} µs",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99)
        );
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn memory(path: &Path, steps: &[(String, Points, Points)]) -> anyhow::Result<()> {
    let all = || steps.iter().flat_map(|(_, r, h)| r.iter().chain(h));
    let max_x = all().map(|p| p.0).fold(1.0, f64::max);
    let max_y = all().map(|p| p.1).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("gateway memory per idle connection", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..max_x * 1.05, 0f64..max_y * 1.25)?;
    chart
        .configure_mesh()
        .x_desc("connections")
        .y_desc("bytes per connection")
        .draw()?;
    let mut i = 0;
    for (name, rss, heap) in steps {
        for (what, points) in [("RSS", rss), ("heap", heap)] {
            if points.is_empty() {
                continue;
            }
            let color = COLORS[i % COLORS.len()];
            i += 1;
            let label = if name.is_empty() || name == "steps" {
                what.to_owned()
            } else {
                format!("{name} {what}")
            };
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(
                points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::{encode_histogram, new_histogram};

    #[test]
    fn charts_are_drawn_from_report_fields() {
        let mut h = new_histogram();
        for v in [100, 150, 200, 900, 5000] {
            h.record(v).unwrap();
        }
        let report = serde_json::json!({
            "paths": [{"path": "standalone", "phases": [
                {"phase": "paced", "latency_hist": encode_histogram(&h).unwrap()}
            ]}],
            "steps": [
                {"connections": 5000, "rss_per_conn": 1100.0, "heap_per_conn": 820.0},
                {"connections": 10000, "rss_per_conn": 1000.0, "heap_per_conn": 840.0}
            ]
        });
        let dir = std::env::temp_dir().join(format!("herald-chart-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.json");
        std::fs::write(&path, report.to_string()).unwrap();
        let charts = write_charts(&path).unwrap();
        assert_eq!(
            charts,
            [dir.join("r.latency-cdf.svg"), dir.join("r.memory.svg")]
        );
        let cdf = std::fs::read_to_string(&charts[0]).unwrap();
        assert!(
            cdf.contains("standalone paced: p50 200 µs"),
            "legend missing"
        );
        let mem = std::fs::read_to_string(&charts[1]).unwrap();
        assert!(mem.contains("<circle"), "step points missing");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
