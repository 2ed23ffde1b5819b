//! `graft metrics RUN`: per-step metrics as a table, CSV, JSON, a terminal
//! chart, or a plot file (SVG or PNG).

use super::{output, plot, CliError, CliResult, Context};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run (or a checkpoint of it).
    #[arg(value_name = "RUN")]
    pub reference: String,
    /// Comma-separated series to show [default: all].
    #[arg(long, value_delimiter = ',')]
    pub series: Vec<String>,
    /// Print CSV (step, then one column per series).
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Draw each series as a chart in the terminal.
    #[arg(long)]
    pub chart: bool,
    /// Write a plot; the extension picks the format (.svg or .png).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
}

pub fn run(args: Args, context: &Context) -> CliResult {
    if let Some(path) = &args.plot {
        plot::check_extension(path)?;
    }
    let store = context.store()?;
    let index = store.index()?;
    let run = index.resolve_run(&args.reference)?;
    let available = index.run_series(&run)?;
    let names = if args.series.is_empty() {
        available.clone()
    } else {
        for name in &args.series {
            if !available.contains(name) {
                return Err(
                    CliError::user(format!("run {} has no series `{name}`", run.short()))
                        .with_hint(format!("it has: {}", available.join(", "))),
                );
            }
        }
        args.series.clone()
    };
    // In the order asked for, so CSV and table columns follow --series.
    let mut data: Vec<(String, Vec<(u64, f64)>)> = Vec::new();
    for name in &names {
        data.push((name.clone(), index.series(&run, name)?));
    }
    // A run is known by its tags where it has them; the id prefix stays to
    // tell runs apart.
    let tags = crate::lineage::summary::tags_by_target(&index)?
        .remove(&run)
        .unwrap_or_default();
    drop(index);
    if let Some(path) = &args.plot {
        let title = match tags.is_empty() {
            true => format!("run {}", run.short()),
            false => format!("{} (run {})", tags.join(", "), &run.short()[..8]),
        };
        plot::write(path, &title, &data.iter().cloned().collect())?;
        eprintln!("wrote {}", path.display());
    }
    if args.json {
        let value: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|(name, points)| {
                (
                    name.clone(),
                    points
                        .iter()
                        .map(|(s, v)| serde_json::json!([s, v]))
                        .collect(),
                )
            })
            .collect();
        return output::print_json(&serde_json::json!({"run": run.to_hex(), "series": value}));
    }
    if args.chart {
        for (name, points) in &data {
            output::println_safe(&plot::terminal_chart(name, points, 72, 12));
        }
        return Ok(());
    }
    if args.plot.is_some() && !args.csv {
        return Ok(());
    }
    // Wide form: one row per step, one column per series.
    let mut rows: BTreeMap<u64, Vec<Option<f64>>> = BTreeMap::new();
    for (i, (_, points)) in data.iter().enumerate() {
        for &(step, value) in points {
            rows.entry(step).or_insert_with(|| vec![None; data.len()])[i] = Some(value);
        }
    }
    if args.csv {
        let mut out = format!("step,{}", names.join(","));
        for (step, values) in &rows {
            out.push_str(&format!("\n{step}"));
            for value in values {
                out.push(',');
                if let Some(v) = value {
                    out.push_str(&v.to_string());
                }
            }
        }
        output::println_safe(&out);
        return Ok(());
    }
    let mut header = vec!["step"];
    header.extend(names.iter().map(String::as_str));
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(step, values)| {
            let mut row = vec![step.to_string()];
            row.extend(
                values
                    .iter()
                    .map(|v| v.map(output::number).unwrap_or_default()),
            );
            row
        })
        .collect();
    output::println_safe(&output::table(&header, &table_rows));
    Ok(())
}
