//! Metric plots: SVG or PNG files through plotters, and a plain-text chart
//! for the terminal.

use super::{CliError, CliResult};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

pub fn check_extension(path: &Path) -> CliResult {
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg") | Some("png") => Ok(()),
        _ => Err(CliError::user(format!(
            "{}: a plot file must end in .svg or .png",
            path.display()
        ))),
    }
}

/// The embedded font, registered once so text renders on machines without
/// system fonts.
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// One line per series on shared axes.
pub fn write(path: &Path, title: &str, series: &BTreeMap<String, Vec<(u64, f64)>>) -> CliResult {
    check_extension(path)?;
    register_font();
    let fail = |e: &dyn std::fmt::Display| CliError::internal(format!("{}: {e}", path.display()));
    let size = (960, 540);
    if path.extension().and_then(|e| e.to_str()) == Some("svg") {
        draw(
            SVGBackend::new(path, size).into_drawing_area(),
            title,
            series,
        )
        .map_err(|e| fail(&e))
    } else {
        draw(
            BitMapBackend::new(path, size).into_drawing_area(),
            title,
            series,
        )
        .map_err(|e| fail(&e))
    }
}

fn draw<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    series: &BTreeMap<String, Vec<(u64, f64)>>,
) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    area.fill(&WHITE).map_err(|x| e(&x))?;
    let points: Vec<&(u64, f64)> = series
        .values()
        .flatten()
        .filter(|(_, v)| v.is_finite())
        .collect();
    let max_step = points.iter().map(|(s, _)| *s).max().unwrap_or(1).max(1);
    let (mut low, mut high) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), (_, v)| {
            (lo.min(*v), hi.max(*v))
        });
    if points.is_empty() {
        (low, high) = (0.0, 1.0);
    }
    if high - low < 1e-12 {
        high = low + 1.0;
    }
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0u64..max_step, low..high)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|x| e(&x))?;
    for (i, (name, data)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                data.iter().filter(|(_, v)| v.is_finite()).copied(),
                color.stroke_width(2),
            ))
            .map_err(|x| e(&x))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|x| e(&x))?;
    area.present().map_err(|x| e(&x))?;
    Ok(())
}

/// A chart of one series in `width` x `height` characters.
pub fn terminal_chart(name: &str, points: &[(u64, f64)], width: usize, height: usize) -> String {
    let finite: Vec<(u64, f64)> = points
        .iter()
        .copied()
        .filter(|(_, v)| v.is_finite())
        .collect();
    if finite.is_empty() {
        return format!("{name}: no points");
    }
    let (first, last) = (finite[0].0, finite[finite.len() - 1].0);
    let (low, high) = finite
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), (_, v)| {
            (lo.min(*v), hi.max(*v))
        });
    let span = (high - low).max(1e-12);
    let mut grid = vec![vec![' '; width]; height];
    for &(step, value) in &finite {
        let x = if last == first {
            0
        } else {
            ((step - first) as f64 / (last - first) as f64 * (width - 1) as f64).round() as usize
        };
        let y = ((value - low) / span * (height - 1) as f64).round() as usize;
        grid[height - 1 - y][x] = '•';
    }
    let mut out = format!("{name}  (steps {first}..{last}, min {low:.4}, max {high:.4})\n");
    for (i, row) in grid.iter().enumerate() {
        let label = if i == 0 {
            format!("{high:>10.4} ┤")
        } else if i == height - 1 {
            format!("{low:>10.4} ┤")
        } else {
            format!("{:>10} │", "")
        };
        out.push_str(&label);
        out.push_str(&row.iter().collect::<String>());
        out.push('\n');
    }
    out.push_str(&format!("{:>11}└{}", "", "─".repeat(width)));
    out
}
