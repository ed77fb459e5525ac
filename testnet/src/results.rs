//! What one scenario run measured, as `results.json` (read back by
//! `testnet report`) and as a Markdown summary, with the goals it is held
//! to.

use serde::{Deserialize, Serialize};

use crate::scenario::Baseline;

/// One job as it ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobRecord {
    pub index: usize,
    pub runner: String,
    pub region: u8,
    pub tool: String,
    pub set: String,
    /// Seconds from the start of the run.
    pub start_s: f64,
    pub seconds: f64,
    pub in_outage: bool,
    pub checked_files: usize,
    pub corrupted_files: usize,
    pub error: Option<String>,
}

/// A node's bytes by source at the end of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunnerBytes {
    pub runner: String,
    pub poisoner: bool,
    pub local: u64,
    pub peer: u64,
    pub upstream: u64,
    /// Transfers from peers refused for failing verification.
    pub refused: u64,
    /// Peers blocked at the end.
    pub blocked: u64,
    /// Later ranges of large files appended from other providers (0 in
    /// runs of builds before ranges).
    #[serde(default)]
    pub ranges: u64,
}

/// Cluster totals at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    pub t_s: f64,
    /// Bytes the index sent so far.
    pub index_egress: u64,
    /// Bytes peerpi nodes served by source so far (0 without peerpi).
    pub local: u64,
    pub peer: u64,
    pub upstream: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    pub scenario: String,
    pub baseline: Baseline,
    pub regions: u8,
    pub nodes_per_region: u8,
    pub parallel: usize,
    pub seed: u64,
    pub set: String,
    pub command: String,
    pub elapsed_s: f64,
    pub jobs: Vec<JobRecord>,
    pub egress_bytes: u64,
    pub unique_bytes: u64,
    /// Bytes the router carried between regions (IP packets: payload plus
    /// headers and DHT traffic).
    pub cross_region_bytes: u64,
    pub by_runner: Vec<RunnerBytes>,
    pub timeline: Vec<Sample>,
    pub poisoners: Vec<String>,
    pub restarts: Vec<String>,
    pub events: Vec<String>,
    /// Files the index sent more than once, and how often.
    #[serde(default)]
    pub refetched: Vec<(String, u64)>,
    /// `herd`: seconds one runner alone takes to install the same files
    /// straight from the index, measured after the herd.
    #[serde(default)]
    pub reference_s: Option<f64>,
}

/// `herd`: the time until the last runner holds the files, at most this
/// many times one upstream download of them.
pub const HERD_GOAL: f64 = 1.25;

/// The `p` quantile (0..=1) of `values`, nearest rank.
pub fn quantile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round().max(0.0) as usize)
        .copied()
        .unwrap_or(0.0)
}

impl Results {
    pub fn egress_ratio(&self) -> f64 {
        if self.unique_bytes == 0 {
            0.0
        } else {
            self.egress_bytes as f64 / self.unique_bytes as f64
        }
    }

    /// Cross-region bytes per region that could need each file once.
    pub fn cross_region_copies(&self) -> f64 {
        let regions = f64::from(self.regions.saturating_sub(1).max(1));
        if self.unique_bytes == 0 {
            0.0
        } else {
            self.cross_region_bytes as f64 / (self.unique_bytes as f64 * regions)
        }
    }

    pub fn failed_jobs(&self) -> Vec<&JobRecord> {
        self.jobs.iter().filter(|j| j.error.is_some()).collect()
    }

    pub fn corrupted_files(&self) -> usize {
        self.jobs.iter().map(|j| j.corrupted_files).sum()
    }

    pub fn checked_files(&self) -> usize {
        self.jobs.iter().map(|j| j.checked_files).sum()
    }

    /// Seconds from the first job's start to the last job's end.
    pub fn makespan_s(&self) -> f64 {
        let start = self
            .jobs
            .iter()
            .map(|j| j.start_s)
            .fold(f64::INFINITY, f64::min);
        let end = self
            .jobs
            .iter()
            .map(|j| j.start_s + j.seconds)
            .fold(0.0, f64::max);
        if start.is_finite() {
            end - start
        } else {
            0.0
        }
    }

    /// `herd`: the makespan over one upstream download, when measured.
    pub fn herd_ratio(&self) -> Option<f64> {
        self.reference_s
            .filter(|r| *r > 0.0)
            .map(|r| self.makespan_s() / r)
    }

    pub fn job_seconds(&self) -> Vec<f64> {
        self.jobs
            .iter()
            .filter(|j| j.error.is_none())
            .map(|j| j.seconds)
            .collect()
    }

    /// The goals this run missed (empty: all met).
    pub fn missed_goals(&self, max_egress: f64) -> Vec<String> {
        let mut missed = Vec::new();
        if !self.failed_jobs().is_empty() {
            missed.push(format!("{} failed jobs", self.failed_jobs().len()));
        }
        if self.corrupted_files() > 0 {
            missed.push(format!("{} corrupted files", self.corrupted_files()));
        }
        let peerpi = matches!(self.baseline, Baseline::Peerpi | Baseline::PeerpiRegion);
        if peerpi && self.egress_ratio() > max_egress {
            missed.push(format!(
                "upstream egress {:.3}x the unique bytes (goal {max_egress}x)",
                self.egress_ratio()
            ));
        }
        if let (true, Some(ratio)) = (peerpi, self.herd_ratio()) {
            if ratio > HERD_GOAL {
                missed.push(format!(
                    "the last runner held the files after {ratio:.2}x one upstream download (goal {HERD_GOAL}x)"
                ));
            }
        }
        missed
    }

    pub fn markdown(&self) -> String {
        let times = self.job_seconds();
        let mut md = format!(
            "# {} on `{}`: {} regions x {} runners, {} jobs ({} at a time), {} package set\n\n\
             `{}`\n\n\
             | measure | value |\n|---|---|\n\
             | failed jobs | {} |\n| corrupted installed files | {} of {} checked |\n\
             | upstream egress | {} B for {} B unique ({:.3}x) |\n\
             | cross-region bytes | {} B ({:.2} copies per region) |\n\
             | job time p50 / p95 | {:.2} s / {:.2} s |\n\
             | run time | {:.0} s |\n",
            self.scenario,
            baseline_name(self.baseline),
            self.regions,
            self.nodes_per_region,
            self.jobs.len(),
            self.parallel,
            self.set,
            self.command,
            self.failed_jobs().len(),
            self.corrupted_files(),
            self.checked_files(),
            self.egress_bytes,
            self.unique_bytes,
            self.egress_ratio(),
            self.cross_region_bytes,
            self.cross_region_copies(),
            quantile(&times, 0.5),
            quantile(&times, 0.95),
            self.elapsed_s,
        );
        if let (Some(reference), Some(ratio)) = (self.reference_s, self.herd_ratio()) {
            md.push_str(&format!(
                "| last runner holds the files | {:.2} s after the first job started |\n\
                 | one upstream download of them, alone | {reference:.2} s ({ratio:.2}x; goal {HERD_GOAL}x) |\n",
                self.makespan_s()
            ));
        }
        if !self.by_runner.is_empty() {
            md.push_str(
                "\n| node | local | peer | upstream | refused from peers | peers blocked | ranges from other providers |\n\
                 |---|---|---|---|---|---|---|\n",
            );
            for r in &self.by_runner {
                md.push_str(&format!(
                    "| {}{} | {} | {} | {} | {} | {} | {} |\n",
                    r.runner,
                    if r.poisoner { " (poisoner)" } else { "" },
                    r.local,
                    r.peer,
                    r.upstream,
                    r.refused,
                    r.blocked,
                    r.ranges
                ));
            }
        }
        if !self.refetched.is_empty() {
            let files: Vec<String> = self
                .refetched
                .iter()
                .map(|(f, n)| format!("{f} x{n}"))
                .collect();
            md.push_str(&format!(
                "\nsent more than once by the index: {}\n",
                files.join(", ")
            ));
        }
        if !self.by_runner.is_empty() {
            let mut regions: std::collections::BTreeMap<String, (u64, u64, u64)> =
                std::collections::BTreeMap::new();
            for r in &self.by_runner {
                let region = r
                    .runner
                    .rsplit('-')
                    .next()
                    .and_then(|s| s.split('n').next())
                    .unwrap_or("?")
                    .to_string();
                let sums = regions.entry(region).or_default();
                sums.0 += r.local;
                sums.1 += r.peer;
                sums.2 += r.upstream;
            }
            md.push_str("\n| region | local | peer | upstream |\n|---|---|---|---|\n");
            for (region, (local, peer, upstream)) in regions {
                md.push_str(&format!("| {region} | {local} | {peer} | {upstream} |\n"));
            }
        }
        for (title, lines) in [
            ("poisoners", &self.poisoners),
            ("restarts", &self.restarts),
            ("events", &self.events),
        ] {
            if !lines.is_empty() {
                md.push_str(&format!("\n{title}: {}\n", lines.join("; ")));
            }
        }
        for job in self.failed_jobs() {
            md.push_str(&format!(
                "\nfailed: job {} on {} ({}, {}): {}\n",
                job.index,
                job.runner,
                job.tool,
                job.set,
                job.error.as_deref().unwrap_or_default()
            ));
        }
        md
    }
}

pub fn baseline_name(baseline: Baseline) -> &'static str {
    match baseline {
        Baseline::Peerpi => "peerpi on every runner",
        Baseline::PeerpiRegion => "peerpi, one node per region",
        Baseline::Proxy => "nginx proxy_cache per region",
        Baseline::Direct => "direct to the index",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(start_s: f64, seconds: f64) -> JobRecord {
        JobRecord {
            start_s,
            seconds,
            ..JobRecord::default()
        }
    }

    /// The herd's measure: from the first job's start to the last job's
    /// end, over one download alone; a peerpi run above the goal misses.
    #[test]
    fn a_herd_is_measured_from_the_first_start_to_the_last_end() {
        let mut results = Results {
            baseline: Baseline::Peerpi,
            jobs: vec![job(2.0, 60.0), job(2.5, 70.0), job(3.0, 50.0)],
            ..Results::default()
        };
        assert!((results.makespan_s() - 70.5).abs() < 1e-9);
        assert_eq!(results.herd_ratio(), None, "no reference: not a herd");
        assert!(results.missed_goals(1.05).is_empty());
        results.reference_s = Some(50.0);
        assert!((results.herd_ratio().unwrap() - 1.41).abs() < 1e-9);
        assert_eq!(results.missed_goals(1.05).len(), 1);
        assert!(results
            .markdown()
            .contains("\n| one upstream download of them, alone | 50.00 s"));
        results.reference_s = Some(60.0);
        assert!(results.missed_goals(1.05).is_empty());
    }
}
