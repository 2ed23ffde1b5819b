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

/// Series colours: well apart from each other and dark enough to read on white
/// (no yellow); Okabe-Ito's colour-blind-safe set less its yellow, with brown,
/// purple and grey after. More series than colours cycle.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0x00, 0x72, 0xB2), // blue
    RGBColor(0xD5, 0x5E, 0x00), // vermillion
    RGBColor(0x00, 0x9E, 0x73), // bluish green
    RGBColor(0xCC, 0x79, 0xA7), // reddish purple
    RGBColor(0x00, 0x00, 0x00), // black
    RGBColor(0x8C, 0x56, 0x4B), // brown
    RGBColor(0x6A, 0x3D, 0x9A), // purple
    RGBColor(0x7F, 0x7F, 0x7F), // grey
];

/// Width of the legend column right of the plot, so it never covers a curve.
const LEGEND_WIDTH: u32 = 220;

/// One line per series on shared axes: `step` across, the series' values up,
/// the legend in its own column on the right.
pub fn write(path: &Path, title: &str, series: &BTreeMap<String, Vec<(u64, f64)>>) -> CliResult {
    check_extension(path)?;
    register_font();
    let fail = |e: &dyn std::fmt::Display| CliError::internal(format!("{}: {e}", path.display()));
    let size = (960 + LEGEND_WIDTH, 540);
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

/// The y axis's label: the series' name, or names while they fit.
fn value_label(series: &BTreeMap<String, Vec<(u64, f64)>>) -> String {
    let names: Vec<&str> = series.keys().map(String::as_str).collect();
    let joined = names.join(", ");
    if joined.len() <= 48 {
        joined
    } else {
        "value (series in the legend)".into()
    }
}

fn draw<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    series: &BTreeMap<String, Vec<(u64, f64)>>,
) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    area.fill(&WHITE).map_err(|x| e(&x))?;
    let area = area.titled(title, ("sans-serif", 22)).map_err(|x| e(&x))?;
    let (width, _) = area.dim_in_pixel();
    let (plot_area, legend_area) = area.split_horizontally(width.saturating_sub(LEGEND_WIDTH));
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
    let mut chart = ChartBuilder::on(&plot_area)
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(76)
        .build_cartesian_2d(0u64..max_step, low..high)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(value_label(series))
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|x| e(&x))?;
    for (i, data) in series.values().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                data.iter().filter(|(_, v)| v.is_finite()).copied(),
                color.stroke_width(2),
            ))
            .map_err(|x| e(&x))?;
    }
    // The legend: a swatch and the name per series, top to bottom.
    for (i, name) in series.keys().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let y = 24 + 24 * i as i32;
        legend_area
            .draw(&PathElement::new(
                vec![(8, y), (32, y)],
                color.stroke_width(3),
            ))
            .map_err(|x| e(&x))?;
        legend_area
            .draw(&Text::new(
                name.clone(),
                (40, y - 8),
                ("sans-serif", 14).into_font().color(&BLACK),
            ))
            .map_err(|x| e(&x))?;
    }
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
