//! Configuration layering: flags, then `PEERPI_*` variables (both through
//! clap), then the TOML file, then defaults. With no upstream configured the
//! node inherits the one pip or uv already use, never one pointing at itself.
//! Split by job: `args` (every setting, declared once), `values` (typed
//! values), `upstream` (discovery, exposure), `serve` (resolving `peerpi
//! serve`), `reach` (where clients reach the node).

pub mod args;
mod reach;
mod serve;
mod upstream;
mod values;

pub use reach::*;
pub use serve::*;
pub use upstream::*;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use args::{CommonArgs, NodePlace, ServeOptions};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7503";

/// Reads an environment variable; injected so that tests need not touch the
/// process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `peerpi.toml`: every key optional, named as the long flags (`mdns` and
/// `p2p` for the `no-` switches).
#[derive(Debug, Default, Deserialize)]
pub struct FileConfig {
    #[serde(flatten)]
    pub place: NodePlace,
    #[serde(flatten)]
    pub options: ServeOptions,
}

/// The keys a config file may hold: one per setting of `peerpi serve`,
/// read off the one declaration (serde cannot refuse unknown keys across
/// flattened structs).
pub fn file_keys() -> Vec<String> {
    use clap::Args;
    let declared = NodePlace::augment_args(ServeOptions::augment_args(clap::Command::new("file")));
    declared
        .get_arguments()
        .map(|arg| arg.get_id().as_str().replace('_', "-"))
        .collect()
}

/// The data directory: the one given, else `$XDG_CACHE_HOME/peerpi`.
pub fn resolve_data_dir(given: Option<&Path>, env: EnvLookup<'_>) -> Result<PathBuf> {
    match given {
        Some(d) => Ok(d.to_path_buf()),
        None => cache_home(env).map(|c| c.join("peerpi")).ok_or_else(|| {
            anyhow!("no cache directory is known (HOME is unset): pass --data-dir DIR")
        }),
    }
}

/// Where the node is, for the commands that only need that: flags and
/// variables over the file.
pub fn locate(common: &CommonArgs, env: EnvLookup<'_>) -> Result<NodePlace> {
    Ok(common.place.clone().or(load_file(common, env)?.place))
}

/// The data directory of a command that opens a node's store.
pub fn data_dir(common: &CommonArgs, env: EnvLookup<'_>) -> Result<PathBuf> {
    resolve_data_dir(locate(common, env)?.data_dir.as_deref(), env)
}

/// Loads the config file named by `--config`, or the first default that exists.
pub fn load_file(common: &CommonArgs, env: EnvLookup<'_>) -> Result<FileConfig> {
    let path = match &common.config {
        Some(p) => Some(p.clone()),
        None => {
            let mut candidates = vec![PathBuf::from("peerpi.toml")];
            if let Some(dir) = config_home(env) {
                candidates.push(dir.join("peerpi").join("peerpi.toml"));
            }
            candidates.into_iter().find(|p| p.is_file())
        }
    };
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))?;
    let known = file_keys();
    if let Some(unknown) = table.keys().find(|key| !known.contains(key)) {
        bail!(
            "invalid config file {}: unknown key `{unknown}` (the keys are the long flags of              `peerpi serve`: {})",
            path.display(),
            known.join(", ")
        );
    }
    table.clone().try_into().map_err(|e: toml::de::Error| {
        // Flattened structs lose the key in serde's message: find it.
        let key = table.iter().find_map(|(key, value)| {
            let alone = toml::Table::from_iter([(key.clone(), value.clone())]);
            alone.try_into::<FileConfig>().is_err().then_some(key)
        });
        match key {
            Some(key) => anyhow!(
                "invalid config file {}: `{key}`: {}",
                path.display(),
                e.message()
            ),
            None => anyhow!("invalid config file {}: {}", path.display(), e.message()),
        }
    })
}

fn config_home(env: EnvLookup<'_>) -> Option<PathBuf> {
    env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".config")))
}

fn cache_home(env: EnvLookup<'_>) -> Option<PathBuf> {
    env("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".cache")))
}

pub fn resolve_listen(given: Option<&str>) -> Result<SocketAddr> {
    let text = given.unwrap_or(DEFAULT_LISTEN);
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            anyhow!("invalid listen address {text:?}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use peerpi_node::trust::TrustMode;
    use url::Url;

    use super::args::LogFormat;
    use peerpi_node::NodeConfig;
    use peerpi_swarm::SwarmConfig;
    use std::collections::HashMap;
    use std::ops::Not;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn listen() -> SocketAddr {
        DEFAULT_LISTEN.parse().unwrap()
    }

    /// `peerpi serve ARGS` as the real command line parses it.
    fn serve_args(args: &[&str]) -> crate::serve::ServeArgs {
        serve_parse(args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn serve_parse(args: &[&str]) -> Result<crate::serve::ServeArgs, clap::Error> {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(["peerpi", "serve"].iter().chain(args))?;
        match cli.command {
            crate::cli::Command::Serve(args) => Ok(*args),
            other => panic!("not serve: {other:?}"),
        }
    }

    fn resolve(args: &[&str], env: &[(&str, &str)]) -> Result<ServeConfig> {
        serve_args(args).resolve(&env_of(env))
    }

    #[test]
    fn flags_win_over_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("peerpi.toml");
        std::fs::write(&file, "upstream = \"https://file.invalid/simple/\"\ncache-size = \"1GiB\"\npage-ttl = \"5m\"\n").unwrap();
        let (config, data) = (file.to_str().unwrap(), dir.path().to_str().unwrap());
        let c = resolve(&["--config", config, "--data-dir", data], &[]).unwrap();
        assert_eq!(c.upstream().as_str(), "https://file.invalid/simple/");
        assert_eq!(c.upstream_source, "the config file");
        assert_eq!(c.node.cache_size, 1 << 30);
        assert_eq!(c.node.page_ttl, Duration::from_secs(300));
        assert_eq!(c.listen, listen());
        let defaults = NodeConfig::new(PathBuf::new(), c.node.upstream.clone());
        assert_eq!(
            c.node.peer_deadline, defaults.peer_deadline,
            "a library default"
        );
        let c = resolve(
            &[
                "--config",
                config,
                "--data-dir",
                data,
                "--upstream",
                "https://flag.invalid/simple/",
                "--cache-size",
                "2GiB",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.upstream().as_str(), "https://flag.invalid/simple/");
        assert_eq!(c.node.cache_size, 2 << 30);
        assert_eq!(
            c.node.page_ttl,
            Duration::from_secs(300),
            "still the file's"
        );
    }

    /// Every `peerpi serve` setting has a variable, a file key and a README
    /// row that names both and shows the default the code has (the one
    /// `--help` shows too).
    #[test]
    fn every_serve_flag_has_a_variable_a_file_key_and_a_readme_row_with_its_default() {
        let readme = include_str!("../../../../README.md");
        let cli = crate::cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
        let defaults = defaults();
        let keys = file_keys();
        let mut checked = 0;
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" || long == "config" {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            let env = env.unwrap_or_else(|| panic!("--{long} has no PEERPI_* variable"));
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `--{long}")))
                .unwrap_or_else(|| panic!("README's table has no row for --{long}"));
            assert!(
                row.contains(&format!("`{env}`")),
                "README row of --{long} names {env}"
            );
            let key = arg.get_id().as_str().replace('_', "-");
            assert!(
                keys.contains(&key),
                "peerpi.toml has the key {key} for --{long}"
            );
            assert!(
                row.contains(&format!("`{key}")),
                "README row of --{long} names the key {key}"
            );
            if let Some((_, values)) = defaults.iter().find(|(id, _)| *id == arg.get_id()) {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                for value in values {
                    assert!(
                        row.contains(&format!("`{value}`")),
                        "README row of --{long} shows the default {value}: {row}"
                    );
                    assert!(
                        help.contains(value),
                        "--help of --{long} shows the default {value}: {help}"
                    );
                }
            }
            checked += 1;
        }
        assert!(checked >= 25, "{checked} flags checked");
        assert!(defaults.len() >= 14, "{} defaults checked", defaults.len());
    }

    /// Each file key reads like its flag; an unknown key is refused with
    /// the list of good ones.
    #[test]
    fn file_keys_read_like_flags_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("peerpi.toml");
        std::fs::write(
            &file,
            "upstream = \"https://u.invalid/\"\npeer-deadline = \"750ms\"\nscrub-rate = \"0\"\n\
             bulk-listen = \"off\"\nupload-limit = \"8MiB\"\np2p-listen = [\"/ip4/127.0.0.1/tcp/1\"]\n\
             log-format = \"json\"\ntrust = \"index\"\nmdns = true\nswarm-key = \"k\"\n",
        )
        .unwrap();
        let (config, data) = (file.to_str().unwrap(), dir.path().to_str().unwrap());
        let c = resolve(&["--config", config, "--data-dir", data], &[]).unwrap();
        assert_eq!(c.node.peer_deadline, Duration::from_millis(750));
        assert_eq!(c.node.scrub.rate, 0);
        assert_eq!(c.log_format, LogFormat::Json);
        let p2p = c.p2p.unwrap();
        assert_eq!(p2p.swarm.bulk_listen, None);
        assert_eq!(p2p.swarm.upload_limit, Some(8 << 20));
        assert_eq!(p2p.swarm.listen.len(), 1);
        assert!(p2p.swarm.mdns, "asked for in a private swarm");
        std::fs::write(
            &file,
            "upstream = \"https://u.invalid/\"\npeer_deadline = \"1s\"\n",
        )
        .unwrap();
        let e = format!("{:#}", resolve(&["--config", config], &[]).unwrap_err());
        assert!(
            e.contains("unknown key `peer_deadline`") && e.contains("peer-deadline"),
            "{e}"
        );
        std::fs::write(&file, "page-ttl = \"soon\"\n").unwrap();
        let e = format!("{:#}", resolve(&["--config", config], &[]).unwrap_err());
        assert!(e.contains("page-ttl") && e.contains("10m"), "{e}");
    }

    #[test]
    fn trust_modes_need_a_root_and_a_signer_and_tuf_mode_takes_no_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let root = dir.path().join("root.json");
        let root = root.to_str().unwrap();
        let e = resolve(&["--data-dir", data, "--trust", "tuf"], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--tuf-root FILE"), "{e}");
        let e = resolve(
            &["--data-dir", data, "--trust", "tuf", "--tuf-root", root],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--tuf-url URL"), "{e}");
        let tuf = [
            "--data-dir",
            data,
            "--trust",
            "tuf",
            "--tuf-root",
            root,
            "--tuf-url",
            "http://signer.internal:7503/tuf",
        ];
        let config = resolve(
            &tuf,
            &[("PIP_INDEX_URL", "https://elsewhere.invalid/simple/")],
        )
        .unwrap();
        // The signer is the only source, whatever pip's settings say.
        assert_eq!(
            config.upstream().as_str(),
            "http://signer.internal:7503/simple/"
        );
        let trust = config.node.trust.unwrap();
        assert_eq!(
            (trust.mode, trust.url.as_str()),
            (TrustMode::Tuf, "http://signer.internal:7503/tuf/")
        );
        let with_upstream = |mode: &'static str| {
            let mut args = tuf.to_vec();
            args[3] = mode;
            args.extend(["--upstream", "https://index.invalid/simple/"]);
            resolve(&args, &[])
        };
        let e = with_upstream("tuf").unwrap_err().to_string();
        assert!(e.contains("drop --upstream"), "{e}");
        let config = with_upstream("tuf-or-index").unwrap();
        assert_eq!(config.upstream().as_str(), "https://index.invalid/simple/");
        // The index's own TUF: the index is the upstream, no signer.
        let config = with_upstream("index-signed").unwrap();
        assert_eq!(config.upstream().as_str(), "https://index.invalid/simple/");
        assert_eq!(config.node.trust.unwrap().mode, TrustMode::IndexSigned);
        assert!(with_upstream("index").unwrap().node.trust.is_none());
    }

    #[test]
    fn an_upstream_with_credentials_needs_a_swarm_key_for_peer_to_peer() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let private = "https://ci:s3cret@private.invalid/simple/";
        let e = resolve(&["--data-dir", data, "--upstream", private], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--swarm-key") && e.contains("--no-p2p"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");

        // Credentials from netrc count too.
        let netrc = dir.path().join("netrc");
        std::fs::write(
            &netrc,
            "machine other.invalid login a password b
machine private.invalid
  login ci password s3cret
",
        )
        .unwrap();
        let env = [("NETRC", netrc.to_str().unwrap())];
        let upstream = |url| ["--data-dir", data, "--upstream", url];
        let e = resolve(&upstream("https://private.invalid/simple/"), &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("netrc"), "{e}");
        assert!(
            resolve(&upstream("https://public.invalid/simple/"), &env).is_ok(),
            "no entry for this host"
        );

        // A private swarm, or none, is fine; a private swarm has mDNS off.
        let keyed = [&upstream(private)[..], &["--swarm-key", "swarm.key"]].concat();
        let p2p = resolve(&keyed, &env).unwrap().p2p.unwrap();
        assert!(
            !p2p.swarm.mdns,
            "mDNS off with a swarm key unless asked for"
        );
        let off = [&upstream(private)[..], &["--no-p2p"]].concat();
        assert!(resolve(&off, &env).unwrap().p2p.is_none());
    }

    /// A `no-` switch alone, or its variable set true, turns the setting
    /// off; set false it leaves it on.
    #[test]
    fn switches_read_like_clap_flags() {
        for off in ["", "1", "true", "YES", "on"] {
            assert_eq!(values::switched_off(off), Ok(false), "{off:?}");
        }
        for on in ["0", "false", "no", "off"] {
            assert_eq!(values::switched_off(on), Ok(true), "{on:?}");
        }
        assert!(values::switched_off("maybe").is_err());
    }

    #[test]
    fn an_upstream_with_a_token_or_on_a_private_network_needs_a_swarm_key() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let refused = |upstream: &str| {
            resolve(&["--data-dir", data, "--upstream", upstream], &[])
                .err()
                .map(|e| e.to_string())
        };
        for (upstream, why) in [
            ("https://index.invalid/simple/?token=abc", "query string"),
            (
                "https://index.invalid/Ab3dE5fG7hJ9kL1mN3pQ5r/simple/",
                "token",
            ),
            ("http://10.1.2.3:8080/simple/", "private network"),
            ("http://[fd00::5]/simple/", "private network"),
        ] {
            let e = refused(upstream).unwrap_or_else(|| panic!("{upstream} accepted"));
            assert!(e.contains(why) && e.contains("--swarm-key"), "{e}");
            assert!(!e.contains("  "), "one space between words: {e}");
        }
        for fine in [
            "https://index.invalid/simple/",
            "https://index.invalid/api/packages/pypi/simple/",
            "http://127.0.0.1:3141/root/pypi/+simple/",
        ] {
            assert_eq!(refused(fine), None, "{fine}");
        }
    }

    #[test]
    fn p2p_settings_layer_and_validate() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("peerpi.toml");
        std::fs::write(&file, "upstream = \"https://u.invalid/\"\nbootstrap = [\"/ip4/127.0.0.1/tcp/1\"]\nmdns = false\nregion = \"eu\"\n").unwrap();
        let base = [
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            dir.path().to_str().unwrap(),
        ];
        let with = |more: &[&str]| resolve(&[&base[..], more].concat(), &[]);
        let p2p = with(&[]).unwrap().p2p.unwrap().swarm;
        assert_eq!(p2p.bootstrap.len(), 1);
        assert!(!p2p.mdns);
        assert_eq!(p2p.region.as_deref(), Some("eu"));
        assert_eq!(p2p.listen, SwarmConfig::default_listen(false));
        assert_eq!(p2p.listen.len(), 2, "TCP and QUIC");
        let private = with(&["--swarm-key", "swarm.key"])
            .unwrap()
            .p2p
            .unwrap()
            .swarm;
        assert_eq!(
            private.listen.len(),
            1,
            "a private swarm listens on TCP only"
        );
        assert_eq!(p2p.bulk_listen, Some(peerpi_swarm::DEFAULT_BULK_LISTEN));
        assert_eq!(p2p.upload_limit, None);
        let p2p = with(&["--bulk-listen", "off", "--upload-limit", "8MiB"])
            .unwrap()
            .p2p
            .unwrap()
            .swarm;
        assert_eq!((p2p.bulk_listen, p2p.upload_limit), (None, Some(8 << 20)));
        let flag_error = |more: &[&str]| {
            serve_parse(&[&base[..], more].concat())
                .unwrap_err()
                .to_string()
        };
        let e = flag_error(&["--bulk-listen", "127.0.0.1:99999"]);
        assert!(e.contains("--bulk-listen") && e.contains("off"), "{e}");
        let e = flag_error(&["--upload-limit", "fast"]);
        assert!(e.contains("--upload-limit"), "{e}");
        let e = flag_error(&["--bootstrap", "not a multiaddr"]);
        assert!(e.contains("--bootstrap") && e.contains("/p2p/"), "{e}");
        assert!(with(&["--no-p2p"]).unwrap().p2p.is_none());
        assert!(with(&["--no-mdns"]).unwrap().p2p.unwrap().swarm.mdns.not());
    }

    #[test]
    fn bad_values_say_how_to_fix_them() {
        let base = ["--upstream", "https://u.invalid/", "--data-dir", "/tmp/x"];
        let e = serve_parse(&[&base[..], &["--page-ttl", "soon"]].concat())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--page-ttl") && e.contains("10m"), "{e}");
        let e = serve_parse(&[&base[..], &["--cache-size", "lots"]].concat())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--cache-size") && e.contains("20GiB"), "{e}");
        assert!(resolve(
            &["--upstream", "ftp://u.invalid/", "--data-dir", "/tmp/x"],
            &[]
        )
        .is_err());
    }

    #[test]
    fn inherits_from_uv_then_pip_and_skips_itself() {
        let env = env_of(&[
            ("UV_DEFAULT_INDEX", "http://127.0.0.1:7503/simple/"),
            ("PIP_INDEX_URL", "https://pip.invalid/simple/"),
            ("HOME", "/nonexistent"),
        ]);
        let (url, origin) = inherited_upstream(&env, &listen()).unwrap().unwrap();
        assert_eq!(url.as_str(), "https://pip.invalid/simple/");
        assert_eq!(origin, "PIP_INDEX_URL");
    }

    #[test]
    fn inherits_from_pip_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("pip.conf");
        std::fs::write(
            &conf,
            "[global]\nindex-url = https://conf.invalid/simple/\n",
        )
        .unwrap();
        let conf_text = conf.to_str().unwrap().to_string();
        let env = env_of(&[
            ("PIP_CONFIG_FILE", conf_text.as_str()),
            ("HOME", "/nonexistent"),
        ]);
        let (url, origin) = inherited_upstream(&env, &listen()).unwrap().unwrap();
        assert_eq!(url.as_str(), "https://conf.invalid/simple/");
        assert!(origin.contains("pip.conf"));
    }

    /// What pip answers is the upstream; an answer naming this node is
    /// refused; a python that fails is reported with its own message.
    #[test]
    fn asks_pip_for_its_index_when_nothing_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let fake_python = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path.to_str().unwrap().to_string()
        };
        let answers = fake_python("answers", "echo http://pip.invalid/simple");
        let (url, origin) =
            pip_default_index(&env_of(&[("PEERPI_PYTHON", &answers)]), &listen()).unwrap();
        assert_eq!(url.as_str(), "http://pip.invalid/simple");
        assert!(origin.contains(&answers), "{origin}");

        let itself = fake_python("itself", "echo http://127.0.0.1:7503/simple/");
        let e = pip_default_index(&env_of(&[("PEERPI_PYTHON", &itself)]), &listen()).unwrap_err();
        assert!(e.to_string().contains("this node itself"), "{e}");

        let no_pip = fake_python("no-pip", "echo 'No module named pip' >&2; exit 1");
        let e = pip_default_index(&env_of(&[("PEERPI_PYTHON", &no_pip)]), &listen()).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("No module named pip") && e.contains("--upstream"),
            "{e}"
        );
    }

    #[test]
    fn no_upstream_is_an_error_that_says_how_to_set_one() {
        let e = resolve(
            &["--data-dir", "/tmp/x"],
            &[
                ("HOME", "/nonexistent"),
                ("PEERPI_PYTHON", "/nonexistent/python3"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--upstream")
                && e.contains("PIP_INDEX_URL")
                && e.contains("/nonexistent/python3"),
            "{e}"
        );
    }

    #[test]
    fn detects_urls_pointing_at_the_node() {
        let l = listen();
        assert!(points_at(
            &Url::parse("http://localhost:7503/simple/").unwrap(),
            &l
        ));
        assert!(points_at(
            &Url::parse("http://127.0.0.1:7503/").unwrap(),
            &l
        ));
        assert!(!points_at(
            &Url::parse("http://127.0.0.1:7504/").unwrap(),
            &l
        ));
        assert!(!points_at(
            &Url::parse("https://example.invalid:7503/").unwrap(),
            &l
        ));
        let any: SocketAddr = "0.0.0.0:7503".parse().unwrap();
        assert!(points_at(
            &Url::parse("http://127.0.0.1:7503/").unwrap(),
            &any
        ));
    }
}
