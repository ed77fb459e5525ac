//! One CI job on a runner: a fresh venv, real pip or uv installing a
//! requirement set from the index URL the baseline gives, then every
//! installed file checked against its RECORD hash.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A fresh venv on `runner`, then pip or uv installs `set` from `index`
/// (a Simple API URL as seen from inside the runner's namespace).
pub fn run_job(runner: &str, venv: &Path, index: &str, set: &[&str], pip: bool) -> Result<()> {
    let _ = std::fs::remove_dir_all(venv);
    let venv_s = venv.to_str().context("venv path")?;
    let steps: Vec<Vec<String>> = if pip {
        vec![
            vec!["python3".into(), "-m".into(), "venv".into(), venv_s.into()],
            [
                vec![
                    format!("{venv_s}/bin/pip"),
                    "install".into(),
                    "--no-cache-dir".into(),
                    "--disable-pip-version-check".into(),
                    "--index-url".into(),
                    index.into(),
                    // pip ignores a plain-HTTP index that is not on loopback
                    // unless it is trusted.
                    "--trusted-host".into(),
                    host_of(index).into(),
                ],
                set.iter().map(|s| s.to_string()).collect(),
            ]
            .concat(),
        ]
    } else {
        vec![
            vec!["uv".into(), "venv".into(), "--quiet".into(), venv_s.into()],
            [
                vec![
                    "uv".into(),
                    "pip".into(),
                    "install".into(),
                    "--quiet".into(),
                    "--no-cache".into(),
                    "--python".into(),
                    format!("{venv_s}/bin/python"),
                    "--index-url".into(),
                    index.into(),
                ],
                set.iter().map(|s| s.to_string()).collect(),
            ]
            .concat(),
        ]
    };
    for step in steps {
        let out = Command::new("ip")
            .args(["netns", "exec", runner])
            .args(&step)
            .output()
            .with_context(|| format!("running {}", step[0]))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            bail!(
                "{} failed: {}",
                step[0],
                stderr.lines().rev().take(3).collect::<Vec<_>>().join(" / ")
            );
        }
    }
    Ok(())
}

/// Every installed file against its RECORD hash: (checked, corrupted).
pub fn check_installed(venv: &Path) -> Result<(usize, usize)> {
    let script = r#"
import base64, csv, hashlib, importlib.metadata as m, os, sys
checked = corrupted = 0
for dist in m.distributions():
    record = dist.read_text("RECORD") or ""
    for row in csv.reader(record.splitlines()):
        if len(row) < 2 or not row[1].startswith("sha256="):
            continue
        path = dist.locate_file(row[0])
        want = row[1][len("sha256="):]
        with open(path, "rb") as f:
            got = base64.urlsafe_b64encode(hashlib.sha256(f.read()).digest()).rstrip(b"=").decode()
        checked += 1
        corrupted += got != want
print(checked, corrupted)
"#;
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", script])
        .output()?;
    if !out.status.success() {
        bail!(
            "checking RECORD hashes: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text.split_whitespace().map(str::parse::<usize>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(checked)), Some(Ok(corrupted))) => Ok((checked, corrupted)),
        _ => bail!("unexpected RECORD check output {text:?}"),
    }
}

/// The host of an `http://host:port/...` URL.
fn host_of(url: &str) -> &str {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.split(':').next().unwrap_or(authority)
}
