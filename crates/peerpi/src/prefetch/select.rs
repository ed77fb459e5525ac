//! Which files of a project page a wanted item means: a locked file by its
//! sha256; for a requirement, the newest matching version that is not
//! yanked (a pre-release only when nothing else matches), limited to the
//! hashes given, and to wheels the target can install when a target is set.

use std::str::FromStr;

use peerpi_core::filename::{DistFilename, DistKind};
use peerpi_core::simple::{DistFile, ProjectPage, Yanked};
use pep440_rs::Version;

use super::inputs::Wanted;

/// The interpreter and platforms to pick wheels for; empty: every file.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// CPython major and minor.
    pub python: Option<(u32, u32)>,
    /// Wheel platform tags, e.g. `manylinux_2_28_x86_64`.
    pub platforms: Vec<String>,
}

impl Target {
    pub fn is_any(&self) -> bool {
        self.python.is_none() && self.platforms.is_empty()
    }
}

/// The files of `page` that `wanted` names, or why there are none.
pub fn select<'p>(
    page: &'p ProjectPage,
    wanted: &Wanted,
    target: &Target,
) -> Result<Vec<&'p DistFile>, String> {
    match wanted {
        Wanted::File {
            project,
            filename,
            sha256,
        } => page
            .files
            .iter()
            .find(|f| {
                f.hashes
                    .get("sha256")
                    .is_some_and(|h| h.eq_ignore_ascii_case(sha256))
            })
            .map(|f| vec![f])
            .ok_or_else(|| {
                format!("{filename} (sha256 {sha256}) is not on the index's page of {project}")
            }),
        Wanted::Requirement {
            project,
            specifiers,
            hashes,
        } => {
            let versioned: Vec<(Version, &DistFile)> = page
                .files
                .iter()
                .filter(|f| {
                    hashes.is_empty()
                        || f.hashes
                            .get("sha256")
                            .is_some_and(|h| hashes.iter().any(|w| w.eq_ignore_ascii_case(h)))
                })
                .filter_map(|f| {
                    let parsed = DistFilename::parse(&f.filename).ok()?;
                    Some((Version::from_str(&parsed.version).ok()?, f))
                })
                .filter(|(v, _)| specifiers.contains(v))
                .collect();
            let newest = |allow_pre: bool, allow_yanked: bool| {
                versioned
                    .iter()
                    .filter(|(v, f)| {
                        (allow_pre || !v.any_prerelease())
                            && (allow_yanked || f.yanked == Yanked::No)
                    })
                    .map(|(v, _)| v)
                    .max()
                    .cloned()
            };
            // Pre-releases only when nothing else matches; yanked files only
            // when they are all that matches (PEP 592: an exact pin).
            let version = newest(false, false)
                .or_else(|| newest(true, false))
                .or_else(|| newest(true, true));
            let Some(version) = version else {
                return Err(if hashes.is_empty() {
                    format!("no version of {project} matches {specifiers:?}")
                } else {
                    format!("no file of {project} has the hashes given")
                });
            };
            let files: Vec<&DistFile> = versioned
                .iter()
                .filter(|(v, _)| *v == version)
                .map(|(_, f)| *f)
                .collect();
            let fitting = for_target(files, target);
            if fitting.is_empty() {
                Err(format!(
                    "{project} {version} has no wheel for the target and no sdist"
                ))
            } else {
                Ok(fitting)
            }
        }
    }
}

/// Of one release's files, those an installer on `target` would fetch: the
/// wheels that fit it, else the sdists (it builds from those), else none.
fn for_target<'p>(files: Vec<&'p DistFile>, target: &Target) -> Vec<&'p DistFile> {
    if target.is_any() {
        return files;
    }
    let wheels: Vec<&DistFile> = files
        .iter()
        .copied()
        .filter(|f| wheel_fits(&f.filename, target))
        .collect();
    if !wheels.is_empty() {
        return wheels;
    }
    files
        .into_iter()
        .filter(|f| DistFilename::parse(&f.filename).is_ok_and(|d| d.kind == DistKind::Sdist))
        .collect()
}

/// The files a lock names, cut to `target`: a universal lock (uv.lock, a
/// multi-platform pylock.toml) lists every wheel of every platform, and a
/// warm-up for one runner needs only its own. Per release, the wheels that
/// fit, else its sdist. Releases with neither are returned as reasons.
pub fn locked_for_target<'p>(
    files: Vec<&'p DistFile>,
    target: &Target,
) -> (Vec<&'p DistFile>, Vec<String>) {
    if target.is_any() {
        return (files, Vec::new());
    }
    let mut releases: std::collections::BTreeMap<(String, String), Vec<&'p DistFile>> =
        std::collections::BTreeMap::new();
    let mut kept = Vec::new();
    for f in files {
        match DistFilename::parse(&f.filename) {
            Ok(d) => releases
                .entry((d.name.as_str().to_string(), d.version))
                .or_default()
                .push(f),
            // Not a distribution name we can judge: kept as the lock says.
            Err(_) => kept.push(f),
        }
    }
    let mut unfit = Vec::new();
    for ((project, version), files) in releases {
        let fitting = for_target(files, target);
        if fitting.is_empty() {
            unfit.push(format!(
                "{project} {version}: the lock has no wheel for the target and no sdist"
            ));
        }
        kept.extend(fitting);
    }
    (kept, unfit)
}

/// Whether a wheel's tags fit the target (a simplified form of pip's
/// compatibility tags: exact interpreter tags, `py3`, `abi3` down to 3.2,
/// `any`, and manylinux by glibc version and architecture).
fn wheel_fits(filename: &str, target: &Target) -> bool {
    let Some(stem) = filename.strip_suffix(".whl") else {
        return false;
    };
    let parts: Vec<&str> = stem.split('-').collect();
    let [.., python_tags, abi_tags, platform_tags] = parts.as_slice() else {
        return false;
    };
    let python_fits = match target.python {
        None => true,
        Some((major, minor)) => python_tags.split('.').any(|tag| {
            let exact = [
                format!("py{major}"),
                format!("py{major}{minor}"),
                format!("cp{major}{minor}"),
            ];
            exact.iter().any(|t| t == tag)
                || (abi_tags.split('.').any(|a| a == "abi3")
                    && tag
                        .strip_prefix(&format!("cp{major}"))
                        .and_then(|m| m.parse::<u32>().ok())
                        .is_some_and(|m| m <= minor))
        }),
    };
    let platform_fits = target.platforms.is_empty()
        || platform_tags.split('.').any(|tag| {
            tag == "any"
                || target
                    .platforms
                    .iter()
                    .any(|want| platform_covers(want, tag))
        });
    python_fits && platform_fits
}

/// Whether a machine with platform tag `want` installs wheels tagged `tag`.
fn platform_covers(want: &str, tag: &str) -> bool {
    if want == tag {
        return true;
    }
    match (manylinux(want), manylinux(tag)) {
        (Some((want_glibc, want_arch)), Some((glibc, arch))) => {
            want_arch == arch && glibc <= want_glibc
        }
        _ => false,
    }
}

/// `manylinux_X_Y_ARCH` (and the legacy aliases) as ((X, Y), ARCH).
fn manylinux(tag: &str) -> Option<((u32, u32), &str)> {
    for (alias, glibc) in [
        ("manylinux2014_", (2, 17)),
        ("manylinux2010_", (2, 12)),
        ("manylinux1_", (2, 5)),
    ] {
        if let Some(arch) = tag.strip_prefix(alias) {
            return Some((glibc, arch));
        }
    }
    let rest = tag.strip_prefix("manylinux_")?;
    let mut parts = rest.splitn(3, '_');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some(((major, minor), parts.next()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn target(python: (u32, u32), platform: &str) -> Target {
        Target {
            python: Some(python),
            platforms: vec![platform.into()],
        }
    }

    fn file(filename: &str) -> DistFile {
        DistFile {
            filename: filename.into(),
            url: format!("https://files.invalid/{filename}"),
            hashes: Default::default(),
            requires_python: None,
            yanked: Yanked::No,
            core_metadata: Default::default(),
            size: None,
            upload_time: None,
            provenance: None,
        }
    }

    /// A universal lock names every platform's wheels: for one target only
    /// the fitting wheel of each release is fetched, and the sdist where no
    /// wheel fits (a 12-package lock fetched 159 files, Windows and macOS
    /// wheels included, for one Linux target).
    #[test]
    fn locked_files_are_cut_to_the_target() {
        let lock: Vec<DistFile> = [
            "numpy-2.1.0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "numpy-2.1.0-cp312-cp312-musllinux_1_2_x86_64.whl",
            "numpy-2.1.0-cp312-cp312-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
            "numpy-2.1.0-cp312-cp312-win_amd64.whl",
            "numpy-2.1.0-cp312-cp312-macosx_14_0_arm64.whl",
            "numpy-2.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "numpy-2.1.0.tar.gz",
            "six-1.16.0-py2.py3-none-any.whl",
            "six-1.16.0.tar.gz",
            "crcmod-1.7-cp312-cp312-win_amd64.whl",
            "crcmod-1.7.tar.gz",
            "winonly-1.0-cp312-cp312-win_amd64.whl",
        ]
        .map(file)
        .to_vec();
        let t = target((3, 12), "manylinux_2_28_x86_64");
        let (kept, unfit) = locked_for_target(lock.iter().collect(), &t);
        let mut names: Vec<&str> = kept.iter().map(|f| f.filename.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "crcmod-1.7.tar.gz",
                "numpy-2.1.0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                "six-1.16.0-py2.py3-none-any.whl",
            ]
        );
        assert_eq!(unfit.len(), 1);
        assert!(unfit[0].starts_with("winonly 1.0"), "{unfit:?}");
        let any = Target {
            python: None,
            platforms: Vec::new(),
        };
        assert_eq!(
            locked_for_target(lock.iter().collect(), &any).0.len(),
            lock.len()
        );
    }

    #[test]
    fn wheel_tags_fit_as_pip_would_judge_them() {
        let t = target((3, 12), "manylinux_2_28_x86_64");
        for fits in [
            "a-1.0-py3-none-any.whl",
            "a-1.0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "a-1.0-cp38-abi3-manylinux2014_x86_64.whl",
            "a-1.0-cp312-cp312-manylinux_2_28_x86_64.whl",
        ] {
            assert!(wheel_fits(fits, &t), "{fits}");
        }
        for not in [
            "a-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
            "a-1.0-cp312-cp312-manylinux_2_34_x86_64.whl",
            "a-1.0-cp312-cp312-manylinux_2_17_aarch64.whl",
            "a-1.0-cp312-cp312-win_amd64.whl",
            "a-1.0-py2-none-any.whl",
            "a-1.0.tar.gz",
        ] {
            assert!(!wheel_fits(not, &t), "{not}");
        }
    }
}
