//! What `peerpi prefetch` is asked to warm, read from what jobs install
//! from: `pylock.toml` (PEP 751), `uv.lock`, requirements files (pins,
//! `--hash`, `-r` includes, environment markers) and requirement strings.
//! Lockfiles name exact files and hashes; requirements name projects and
//! versions, which are matched against the index's pages later.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use pep440_rs::VersionSpecifiers;
use pep508_rs::{MarkerEnvironment, Requirement, VersionOrUrl};

/// `-r` includes followed at most this deep (a cycle stops here).
const MAX_INCLUDE_DEPTH: usize = 16;

/// One thing to warm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// A file a lock names: its project, filename and sha256.
    File {
        project: String,
        filename: String,
        sha256: String,
    },
    /// A requirement: the newest matching version's files (only those with
    /// the given hashes, when there are any).
    Requirement {
        project: String,
        specifiers: VersionSpecifiers,
        hashes: Vec<String>,
    },
}

impl Wanted {
    pub fn project(&self) -> &str {
        match self {
            Wanted::File { project, .. } | Wanted::Requirement { project, .. } => project,
        }
    }
}

/// What was read, and what was left out with the reason.
#[derive(Debug, Default)]
pub struct Inputs {
    pub wanted: Vec<Wanted>,
    pub skipped: Vec<String>,
}

/// Reads every input: a file path (by its name: `pylock*.toml`, `uv.lock`,
/// else a requirements file) or a requirement string. Requirements whose
/// markers do not hold in `env` (when given) are skipped.
pub fn read(inputs: &[String], env: Option<&MarkerEnvironment>) -> Result<Inputs> {
    let mut out = Inputs::default();
    for input in inputs {
        let path = Path::new(input);
        if path.is_file() {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name == "uv.lock" {
                read_uv_lock(path, &mut out)?;
            } else if name.starts_with("pylock") && name.ends_with(".toml") {
                read_pylock(path, &mut out)?;
            } else {
                read_requirements(path, env, 0, &mut out)?;
            }
        } else {
            requirement_line(input, input, env, &[], &mut out)?;
        }
    }
    Ok(out)
}

/// PEP 751: `[[packages]]` with `wheels` and `sdist`, each with a URL (or a
/// name) and `hashes.sha256`.
fn read_pylock(path: &Path, out: &mut Inputs) -> Result<()> {
    let lock: toml::Value = read_toml(path)?;
    let packages = lock
        .get("packages")
        .and_then(|p| p.as_array())
        .ok_or_else(|| {
            anyhow!(
                "{}: no [[packages]] (is it a PEP 751 lock?)",
                path.display()
            )
        })?;
    for package in packages {
        let project = string(package, "name", path)?;
        let listed = lock_files(package, &project, path, out, |file| {
            let sha256 = file
                .get("hashes")
                .and_then(|h| h.get("sha256"))
                .and_then(|h| h.as_str());
            let filename = file
                .get("name")
                .and_then(|n| n.as_str())
                .map(str::to_string)
                .or_else(|| {
                    file.get("url")
                        .and_then(|u| u.as_str())
                        .and_then(last_segment)
                });
            (filename, sha256.map(str::to_string))
        });
        if listed == 0 {
            out.skipped.push(format!(
                "{project}: not from an index (vcs, directory or archive) in {}",
                path.display()
            ));
        }
    }
    Ok(())
}

/// uv's lock: `[[package]]` with `sdist` and `wheels`, each `{ url, hash =
/// "sha256:…" }`; packages from a path, git or an editable are skipped.
fn read_uv_lock(path: &Path, out: &mut Inputs) -> Result<()> {
    let lock: toml::Value = read_toml(path)?;
    let packages = lock
        .get("package")
        .and_then(|p| p.as_array())
        .ok_or_else(|| anyhow!("{}: no [[package]] (is it a uv.lock?)", path.display()))?;
    for package in packages {
        let project = string(package, "name", path)?;
        let from_index = package
            .get("source")
            .is_some_and(|s| s.get("registry").is_some());
        if !from_index {
            out.skipped.push(format!(
                "{project}: not from an index in {}",
                path.display()
            ));
            continue;
        }
        lock_files(package, &project, path, out, |file| {
            let sha256 = file
                .get("hash")
                .and_then(|h| h.as_str())
                .and_then(|h| h.strip_prefix("sha256:"));
            let filename = file
                .get("url")
                .and_then(|u| u.as_str())
                .and_then(last_segment);
            (filename, sha256.map(str::to_string))
        });
    }
    Ok(())
}

/// Adds a lock package's files (`wheels`, then `sdist`), each read as
/// (filename, sha256) by `read`; one without both is skipped with a note.
/// Returns how many files the package lists.
fn lock_files(
    package: &toml::Value,
    project: &str,
    path: &Path,
    out: &mut Inputs,
    read: impl Fn(&toml::Value) -> (Option<String>, Option<String>),
) -> usize {
    let mut files: Vec<&toml::Value> = package
        .get("wheels")
        .and_then(|w| w.as_array())
        .map(|w| w.iter().collect())
        .unwrap_or_default();
    files.extend(package.get("sdist"));
    for file in &files {
        match read(file) {
            (Some(filename), Some(sha256)) => out.wanted.push(Wanted::File {
                project: project.to_string(),
                filename,
                sha256: sha256.to_ascii_lowercase(),
            }),
            _ => out.skipped.push(format!(
                "{project}: a file without a name or sha256 in {}",
                path.display()
            )),
        }
    }
    files.len()
}

/// A requirements file: one requirement per logical line (`\` continues a
/// line), `--hash=sha256:…` options, `-r FILE` includes relative to the
/// file; other options are skipped with a note.
fn read_requirements(
    path: &Path,
    env: Option<&MarkerEnvironment>,
    depth: usize,
    out: &mut Inputs,
) -> Result<()> {
    if depth > MAX_INCLUDE_DEPTH {
        bail!(
            "{}: -r includes nest deeper than {MAX_INCLUDE_DEPTH} (a cycle?)",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut logical = String::new();
    for (number, line) in text.lines().enumerate() {
        let line = strip_comment(line);
        if let Some(continued) = line.strip_suffix('\\') {
            logical.push_str(continued);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let entry = std::mem::take(&mut logical);
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let origin = format!("{}:{}", path.display(), number + 1);
        let mut words = entry.split_whitespace().peekable();
        match words.peek().copied() {
            Some("-r" | "--requirement") => {
                words.next();
                let file = words
                    .next()
                    .ok_or_else(|| anyhow!("{origin}: -r without a file"))?;
                let included = include_path(path, file);
                read_requirements(&included, env, depth + 1, out)?;
            }
            Some(option) if option.starts_with("--requirement=") => {
                let file = option.trim_start_matches("--requirement=");
                read_requirements(&include_path(path, file), env, depth + 1, out)?;
            }
            Some(option) if option.starts_with('-') => {
                out.skipped
                    .push(format!("{origin}: option {option} is not used by prefetch"));
            }
            _ => {
                let (requirement, hashes) = split_hashes(entry);
                requirement_line(&requirement, &origin, env, &hashes, out)?;
            }
        }
    }
    Ok(())
}

fn include_path(from: &Path, file: &str) -> PathBuf {
    from.parent().unwrap_or(Path::new(".")).join(file)
}

/// `# …` starts a comment at the line's start or after whitespace.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, c) in line.char_indices() {
        if c == '#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

/// The requirement text and its `--hash=sha256:…` values.
fn split_hashes(entry: &str) -> (String, Vec<String>) {
    let mut requirement = Vec::new();
    let mut hashes = Vec::new();
    let mut words = entry.split_whitespace();
    while let Some(word) = words.next() {
        let value = if word == "--hash" {
            words.next()
        } else {
            word.strip_prefix("--hash=")
        };
        match value {
            Some(v) if word.starts_with("--hash") => {
                if let Some(hex) = v.strip_prefix("sha256:") {
                    hashes.push(hex.to_ascii_lowercase());
                }
            }
            _ => requirement.push(word),
        }
    }
    (requirement.join(" "), hashes)
}

fn requirement_line(
    text: &str,
    origin: &str,
    env: Option<&MarkerEnvironment>,
    hashes: &[String],
    out: &mut Inputs,
) -> Result<()> {
    let requirement = Requirement::<pep508_rs::VerbatimUrl>::from_str(text)
        .map_err(|e| anyhow!("{origin}: {text:?} is not a requirement: {e}"))?;
    if let Some(env) = env {
        if !requirement.evaluate_markers(env, &[]) {
            out.skipped.push(format!(
                "{origin}: {} (its markers do not hold for the target)",
                requirement.name
            ));
            return Ok(());
        }
    }
    let specifiers = match requirement.version_or_url {
        None => VersionSpecifiers::empty(),
        Some(VersionOrUrl::VersionSpecifier(specifiers)) => specifiers,
        Some(VersionOrUrl::Url(_)) => {
            out.skipped.push(format!(
                "{origin}: {} is a direct URL, not from the index",
                requirement.name
            ));
            return Ok(());
        }
    };
    out.wanted.push(Wanted::Requirement {
        project: requirement.name.to_string(),
        specifiers,
        hashes: hashes.to_vec(),
    });
    Ok(())
}

fn read_toml(path: &Path) -> Result<toml::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))
}

fn string(table: &toml::Value, key: &str, path: &Path) -> Result<String> {
    table
        .get(key)
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{}: a package without {key}", path.display()))
}

fn last_segment(url: &str) -> Option<String> {
    let path = url.split(['#', '?']).next()?;
    let name = path.rsplit('/').next()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// The marker environment of CPython `python_version` on `platform` (a
/// wheel platform tag; Linux when none is given).
pub fn target_environment(
    python_version: &str,
    platform: Option<&str>,
) -> Result<MarkerEnvironment> {
    let platform = platform.unwrap_or("linux_x86_64");
    let (sys_platform, system, os) = if platform.starts_with("win") {
        ("win32", "Windows", "nt")
    } else if platform.starts_with("macosx") {
        ("darwin", "Darwin", "posix")
    } else {
        ("linux", "Linux", "posix")
    };
    let machine = [
        "x86_64", "aarch64", "arm64", "amd64", "i686", "ppc64le", "s390x",
    ]
    .into_iter()
    .find(|m| platform.ends_with(m))
    .unwrap_or("x86_64");
    let full = if python_version.matches('.').count() >= 2 {
        python_version.to_string()
    } else {
        format!("{python_version}.0")
    };
    let short: String = python_version
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".");
    MarkerEnvironment::try_from(pep508_rs::MarkerEnvironmentBuilder {
        implementation_name: "cpython",
        implementation_version: &full,
        os_name: os,
        platform_machine: machine,
        platform_python_implementation: "CPython",
        platform_release: "",
        platform_system: system,
        platform_version: "",
        python_full_version: &full,
        python_version: &short,
        sys_platform,
    })
    .map_err(|e| anyhow!("--python-version {python_version:?}: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn requirements_with_hashes_includes_markers_and_options() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("base.txt"),
            "beta==1.0 \\\n    --hash=sha256:AAAA \\\n    --hash sha256:bbbb  # pinned\n",
        )
        .unwrap();
        let main = dir.path().join("requirements.txt");
        std::fs::write(
            &main,
            "# jobs\n-r base.txt\n--index-url http://x.invalid/simple/\nalpha>=1,<3\n\
             winonly ; sys_platform == 'win32'\n",
        )
        .unwrap();
        let env = target_environment("3.12", None).unwrap();
        let read = read(&[main.display().to_string()], Some(&env)).unwrap();
        let projects: Vec<&str> = read.wanted.iter().map(Wanted::project).collect();
        assert_eq!(projects, ["beta", "alpha"]);
        match &read.wanted[0] {
            Wanted::Requirement {
                hashes, specifiers, ..
            } => {
                assert_eq!(hashes, &["aaaa", "bbbb"]);
                assert_eq!(specifiers.to_string(), "==1.0");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(read.skipped.len(), 2, "{:?}", read.skipped);
        assert!(read.skipped[0].contains("--index-url"));
        assert!(read.skipped[1].contains("winonly"));
        // Without a target, markers are not judged: every platform is warmed.
        let all = super::read(&[main.display().to_string()], None).unwrap();
        assert_eq!(all.wanted.len(), 3);
    }

    #[test]
    fn an_include_cycle_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        std::fs::write(&a, "-r b.txt\n").unwrap();
        std::fs::write(dir.path().join("b.txt"), "-r a.txt\n").unwrap();
        let e = read(&[a.display().to_string()], None).unwrap_err();
        assert!(e.to_string().contains("nest deeper"), "{e}");
    }

    #[test]
    fn lockfiles_name_files_and_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let pylock = dir.path().join("pylock.toml");
        std::fs::write(
            &pylock,
            r#"lock-version = "1.0"
created-by = "test"
[[packages]]
name = "alpha"
version = "1.0"
sdist = { url = "https://files.invalid/alpha-1.0.tar.gz", hashes = { sha256 = "AB" } }
wheels = [{ name = "alpha-1.0-py3-none-any.whl", url = "https://files.invalid/x", hashes = { sha256 = "cd" } }]
[[packages]]
name = "local"
directory = { path = "./local" }
"#,
        )
        .unwrap();
        let uv = dir.path().join("uv.lock");
        std::fs::write(
            &uv,
            r#"version = 1
[[package]]
name = "beta"
version = "1.0"
source = { registry = "http://index.invalid/simple" }
sdist = { url = "http://index.invalid/beta-1.0.tar.gz", hash = "sha256:ef", size = 3 }
wheels = [{ url = "http://index.invalid/beta-1.0-py3-none-any.whl", hash = "sha256:01" }]
[[package]]
name = "app"
version = "0.1"
source = { editable = "." }
"#,
        )
        .unwrap();
        let read = read(
            &[pylock.display().to_string(), uv.display().to_string()],
            None,
        )
        .unwrap();
        let files: Vec<(String, String)> = read
            .wanted
            .iter()
            .map(|w| match w {
                Wanted::File {
                    filename, sha256, ..
                } => (filename.clone(), sha256.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            files,
            [
                ("alpha-1.0-py3-none-any.whl".into(), "cd".into()),
                ("alpha-1.0.tar.gz".into(), "ab".into()),
                ("beta-1.0-py3-none-any.whl".into(), "01".into()),
                ("beta-1.0.tar.gz".into(), "ef".into()),
            ]
        );
        assert_eq!(read.skipped.len(), 2, "{:?}", read.skipped);
    }
}
