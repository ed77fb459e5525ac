//! `testnet report`: one Markdown report over several runs' `results.json`
//! (the baselines and the fault scenarios), with SVG plots: install-time
//! CDFs per baseline, upstream egress per run, and bytes by source over
//! time for the peerpi run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use plotters::prelude::*;

use crate::results::{baseline_name, quantile, Results};
use crate::scenario::Baseline;

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Run directories (each with a results.json) or results.json files.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where report.md and the plots go.
    #[arg(long)]
    pub out: PathBuf,
    /// Upstream egress goal for the peerpi runs.
    #[arg(long, default_value_t = 1.05)]
    pub max_egress: f64,
}

const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

pub fn write(args: &ReportArgs) -> Result<()> {
    let mut runs = Vec::new();
    for path in &args.runs {
        let file = if path.is_dir() {
            path.join("results.json")
        } else {
            path.clone()
        };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let results: Results =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        runs.push(results);
    }
    std::fs::create_dir_all(&args.out)?;
    let bursts: Vec<&Results> = runs.iter().filter(|r| r.scenario == "ci-burst").collect();
    if !bursts.is_empty() {
        install_time_cdf(&bursts, &args.out.join("install-time-cdf.svg"))?;
    }
    egress_bars(&runs, &args.out.join("egress.svg"))?;
    if let Some(run) = bursts.iter().find(|r| r.baseline == Baseline::Peerpi) {
        bytes_over_time(run, &args.out.join("bytes-over-time.svg"))?;
    }
    let md = markdown(&runs, args, !bursts.is_empty());
    std::fs::write(args.out.join("report.md"), &md)?;
    print!("{md}");
    Ok(())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn markdown(runs: &[Results], args: &ReportArgs, with_cdf: bool) -> String {
    let mut md = String::from(
        "# testnet report\n\nEach run below was made by the command printed with it, as root, \
         after `cargo build --release -p peerpi -p peerpi-testnet` \
         (`testnet/reports/example/reproduce.sh` runs them all); \
         `testnet report` then wrote this file and the plots.\n\n\
         | scenario | baseline | jobs | failed | corrupted files | upstream egress / unique | \
         cross-region copies | job p50 | job p95 | goals |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for run in runs {
        let times = run.job_seconds();
        let missed = run.missed_goals(args.max_egress);
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} of {} | {:.3}x ({:.1} MB) | {:.2} | {:.2} s | {:.2} s | {} |\n",
            run.scenario,
            baseline_name(run.baseline),
            run.jobs.len(),
            run.failed_jobs().len(),
            run.corrupted_files(),
            run.checked_files(),
            run.egress_ratio(),
            mb(run.egress_bytes),
            run.cross_region_copies(),
            quantile(&times, 0.5),
            quantile(&times, 0.95),
            if missed.is_empty() {
                "met".to_string()
            } else {
                format!("missed: {}", missed.join(", "))
            },
        ));
    }
    md.push_str(
        "\nUpstream egress counts file bytes the index sent; unique bytes are the files it \
         sent at least once. Cross-region copies are the bytes the rig's router carried \
         between regions (IP packets, DHT traffic included) over the unique bytes times the \
         regions that could need each file once. Job times are pip or uv from a fresh venv to \
         an installed, RECORD-checked set; failed jobs are left out of the quantiles.\n\n",
    );
    if with_cdf {
        md.push_str("![install-time CDF per baseline](install-time-cdf.svg)\n\n");
    }
    md.push_str("![upstream egress per run](egress.svg)\n\n");
    if runs
        .iter()
        .any(|r| r.scenario == "ci-burst" && r.baseline == Baseline::Peerpi)
    {
        md.push_str(
            "![bytes by source over time, peerpi on every runner](bytes-over-time.svg)\n\n",
        );
    }
    for run in runs {
        md.push_str("\n---\n\n#");
        md.push_str(&run.markdown());
    }
    md
}

fn install_time_cdf(runs: &[&Results], path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_s = runs
        .iter()
        .flat_map(|r| r.job_seconds())
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("Install time per job (CDF)", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_s * 1.05, 0.0..1.0f64)?;
    chart
        .configure_mesh()
        .x_desc("seconds (fresh venv to installed and checked)")
        .y_desc("fraction of jobs")
        .draw()?;
    for (i, run) in runs.iter().enumerate() {
        let mut times = run.job_seconds();
        if times.is_empty() {
            continue;
        }
        times.sort_by(f64::total_cmp);
        let n = times.len() as f64;
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = times
            .iter()
            .enumerate()
            .map(|(k, t)| (*t, (k + 1) as f64 / n))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(format!(
                "{} (p50 {:.1} s)",
                baseline_name(run.baseline),
                quantile(&times, 0.5)
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn egress_bars(runs: &[Results], path: &Path) -> Result<()> {
    if runs.is_empty() {
        bail!("no runs");
    }
    let root = SVGBackend::new(path, (900, 80 + 36 * runs.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = runs
        .iter()
        .map(Results::egress_ratio)
        .fold(1.1f64, f64::max);
    let n = runs.len();
    let mut chart = ChartBuilder::on(&root)
        .caption("Upstream egress / unique bytes", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(0)
        .build_cartesian_2d(0.0..max * 1.1, 0.0..n as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("x the unique bytes (1.0: each file once)")
        .draw()?;
    for (i, run) in runs.iter().enumerate() {
        let y = (n - 1 - i) as f64;
        let color = COLORS[i % COLORS.len()];
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, y + 0.15), (run.egress_ratio(), y + 0.85)],
            color.filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!(
                "{}, {}: {:.3}x",
                run.scenario,
                baseline_name(run.baseline),
                run.egress_ratio()
            ),
            (0.02 * max, y + 0.62),
            ("sans-serif", 14).into_font().color(&BLACK),
        )))?;
    }
    root.present()?;
    Ok(())
}

fn bytes_over_time(run: &Results, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let last = run.timeline.last().map_or(1.0, |s| s.t_s.max(1.0));
    let top = run
        .timeline
        .iter()
        .map(|s| mb(s.local.max(s.peer).max(s.upstream).max(s.index_egress)))
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Bytes served by source, all nodes (peerpi on every runner)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..last, 0.0..top * 1.05)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the run")
        .y_desc("MB so far")
        .draw()?;
    type Pick = fn(&crate::results::Sample) -> u64;
    let series: [(&str, Pick); 4] = [
        ("from the local store", |s| s.local),
        ("from peers", |s| s.peer),
        ("from upstream", |s| s.upstream),
        ("requested from the index (whole file at request)", |s| {
            s.index_egress
        }),
    ];
    for (i, (label, pick)) in series.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = run.timeline.iter().map(|s| (s.t_s, mb(pick(s)))).collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
