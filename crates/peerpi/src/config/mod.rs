//! Configuration layering: flags, then `PEERPI_*` variables (both through
//! clap), then the TOML file, then defaults. With no upstream configured the
//! node inherits the one pip or uv already use, never one pointing at itself.
//! Split by job: `values` (parsing), `upstream` (discovery, exposure),
//! `serve` (resolving `peerpi serve`), `env` (`peerpi env`).

pub mod args;
mod env;
mod serve;
mod upstream;
mod values;

pub use env::*;
pub use serve::*;
pub use upstream::*;
use values::*;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::Deserialize;

use args::{CommonArgs, LogFormat, TrustArg};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7503";

/// Reads an environment variable; injected so that tests need not touch the
/// process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `peerpi.toml`: every key optional, names as the long flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub cache_size: Option<String>,
    pub scrub_rate: Option<String>,
    pub page_ttl: Option<String>,
    pub page_max_age: Option<String>,
    pub upstream_timeout: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub log_format: Option<LogFormat>,
    pub p2p: Option<bool>,
    pub p2p_listen: Option<Vec<String>>,
    pub bootstrap: Option<Vec<String>>,
    pub mdns: Option<bool>,
    pub region: Option<String>,
    pub swarm_key: Option<PathBuf>,
    pub peer_deadline: Option<String>,
    pub peer_suspension: Option<String>,
    pub peer_timeout: Option<String>,
    pub bulk_listen: Option<String>,
    pub upload_limit: Option<String>,
    pub signer: Option<PathBuf>,
    pub tuf_repo: Option<PathBuf>,
    pub sign_interval: Option<String>,
    pub trust: Option<TrustArg>,
    pub tuf_root: Option<PathBuf>,
    pub tuf_url: Option<String>,
}

/// The data directory: the flag or file, else `$XDG_CACHE_HOME/peerpi`.
pub fn resolve_data_dir(
    flag: Option<&Path>,
    file: &FileConfig,
    env: EnvLookup<'_>,
) -> Result<PathBuf> {
    match flag.map(Path::to_path_buf).or(file.data_dir.clone()) {
        Some(d) => Ok(d),
        None => cache_home(env).map(|c| c.join("peerpi")).ok_or_else(|| {
            anyhow!("no cache directory is known (HOME is unset): pass --data-dir DIR")
        }),
    }
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
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
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

pub fn resolve_listen(flag: Option<&str>, file: &FileConfig) -> Result<SocketAddr> {
    let text = flag.or(file.listen.as_deref()).unwrap_or(DEFAULT_LISTEN);
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

    use super::args::{EnvFormat, ServeArgs};
    use std::collections::HashMap;

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

    #[test]
    fn flags_win_over_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("peerpi.toml");
        std::fs::write(&file, "upstream = \"https://file.invalid/simple/\"\ncache-size = \"1GiB\"\npage-ttl = \"5m\"\n").unwrap();
        let mut args = ServeArgs::default();
        args.common.config = Some(file.clone());
        args.data_dir = Some(dir.path().into());
        let env = env_of(&[]);
        let c = resolve_serve(&args, &env).unwrap();
        assert_eq!(c.upstream.as_str(), "https://file.invalid/simple/");
        assert_eq!(c.cache_size, 1 << 30);
        assert_eq!(c.page_ttl, Duration::from_secs(300));
        assert_eq!(c.listen, listen());
        args.upstream = Some("https://flag.invalid/simple/".into());
        args.cache_size = Some("2GiB".into());
        let c = resolve_serve(&args, &env).unwrap();
        assert_eq!(c.upstream.as_str(), "https://flag.invalid/simple/");
        assert_eq!(c.cache_size, 2 << 30);
    }

    /// Every `peerpi serve` setting is declared in the clap struct, the
    /// config file struct and the README's table: this keeps the three in
    /// step (a flag added to one and forgotten in another fails here).
    #[test]
    fn every_serve_flag_has_a_variable_a_file_key_and_a_readme_row() {
        use clap::CommandFactory;
        let readme = include_str!("../../../../README.md");
        let cli = crate::cli::Cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
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
            // The file key: the flag's name, or `mdns`/`p2p` for the `no-` switches.
            let (key, value) = match long.strip_prefix("no-") {
                Some(positive) => (positive.to_string(), "false".to_string()),
                None if arg.get_num_args().is_some_and(|n| n.max_values() > 1)
                    || matches!(long, "p2p-listen" | "bootstrap") =>
                {
                    (long.to_string(), "[\"x\"]".to_string())
                }
                None if long == "log-format" => (long.to_string(), "\"json\"".to_string()),
                None if long == "trust" => (long.to_string(), "\"tuf-or-index\"".to_string()),
                None => (long.to_string(), "\"x\"".to_string()),
            };
            assert!(
                row.contains(&format!("`{key}")),
                "README row of --{long} names the key {key}"
            );
            let toml_text = format!("{key} = {value}\n");
            toml::from_str::<FileConfig>(&toml_text)
                .unwrap_or_else(|e| panic!("peerpi.toml has no key {key} for --{long}: {e}"));
            checked += 1;
        }
        assert!(checked >= 20, "{checked} flags checked");
    }

    #[test]
    fn trust_modes_need_a_root_and_a_signer_and_tuf_mode_takes_no_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = ServeArgs {
            data_dir: Some(dir.path().into()),
            trust: Some(TrustArg::Tuf),
            ..ServeArgs::default()
        };
        let e = resolve_serve(&args, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("--tuf-root FILE"), "{e}");
        args.tuf_root = Some(dir.path().join("root.json"));
        let e = resolve_serve(&args, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("--tuf-url URL"), "{e}");
        args.tuf_url = Some("http://signer.internal:7503/tuf".into());
        let config = resolve_serve(
            &args,
            &env_of(&[("PIP_INDEX_URL", "https://elsewhere.invalid/simple/")]),
        )
        .unwrap();
        // The signer is the only source, whatever pip's settings say.
        assert_eq!(
            config.upstream.as_str(),
            "http://signer.internal:7503/simple/"
        );
        let trust = config.trust.unwrap();
        assert_eq!(
            (trust.mode, trust.url.as_str()),
            (TrustMode::Tuf, "http://signer.internal:7503/tuf/")
        );
        args.upstream = Some("https://index.invalid/simple/".into());
        let e = resolve_serve(&args, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("drop --upstream"), "{e}");
        args.trust = Some(TrustArg::TufOrIndex);
        let config = resolve_serve(&args, &env_of(&[])).unwrap();
        assert_eq!(config.upstream.as_str(), "https://index.invalid/simple/");
        args.trust = Some(TrustArg::Index);
        assert!(resolve_serve(&args, &env_of(&[])).unwrap().trust.is_none());
    }

    #[test]
    fn an_upstream_with_credentials_needs_a_swarm_key_for_peer_to_peer() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = ServeArgs {
            data_dir: Some(dir.path().into()),
            upstream: Some("https://ci:s3cret@private.invalid/simple/".into()),
            ..ServeArgs::default()
        };
        let e = resolve_serve(&args, &env_of(&[])).unwrap_err().to_string();
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
        args.upstream = Some("https://private.invalid/simple/".into());
        let env = env_of(&[("NETRC", netrc.to_str().unwrap())]);
        let e = resolve_serve(&args, &env).unwrap_err().to_string();
        assert!(e.contains("netrc"), "{e}");
        args.upstream = Some("https://public.invalid/simple/".into());
        assert!(resolve_serve(&args, &env).is_ok(), "no entry for this host");

        // A private swarm, or none, is fine; a private swarm has mDNS off.
        args.upstream = Some("https://ci:s3cret@private.invalid/simple/".into());
        args.swarm_key = Some("swarm.key".into());
        let p2p = resolve_serve(&args, &env).unwrap().p2p.unwrap();
        assert!(!p2p.mdns, "mDNS off with a swarm key unless asked for");
        args.swarm_key = None;
        args.no_p2p = true;
        assert!(resolve_serve(&args, &env).unwrap().p2p.is_none());
    }

    #[test]
    fn an_upstream_with_a_token_or_on_a_private_network_needs_a_swarm_key() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |upstream: &str| {
            let args = ServeArgs {
                data_dir: Some(dir.path().into()),
                upstream: Some(upstream.into()),
                ..ServeArgs::default()
            };
            resolve_serve(&args, &env_of(&[]))
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
        let mut args = ServeArgs::default();
        args.common.config = Some(file);
        args.data_dir = Some(dir.path().into());
        let c = resolve_serve(&args, &env_of(&[])).unwrap();
        let p2p = c.p2p.unwrap();
        assert_eq!(p2p.bootstrap.len(), 1);
        assert!(!p2p.mdns);
        assert_eq!(p2p.region.as_deref(), Some("eu"));
        assert_eq!(p2p.listen[0].to_string(), DEFAULT_P2P_LISTEN);
        assert_eq!(p2p.listen[1].to_string(), DEFAULT_P2P_LISTEN_QUIC);
        args.swarm_key = Some("swarm.key".into());
        let private = resolve_serve(&args, &env_of(&[])).unwrap().p2p.unwrap();
        assert_eq!(
            private.listen.len(),
            1,
            "a private swarm listens on TCP only"
        );
        args.swarm_key = None;
        assert_eq!(p2p.bulk_listen, Some(DEFAULT_BULK_LISTEN.parse().unwrap()));
        assert_eq!(p2p.upload_limit, None);
        args.bulk_listen = Some("off".into());
        args.upload_limit = Some("8MiB".into());
        let p2p = resolve_serve(&args, &env_of(&[])).unwrap().p2p.unwrap();
        assert_eq!((p2p.bulk_listen, p2p.upload_limit), (None, Some(8 << 20)));
        args.bulk_listen = Some("127.0.0.1:99999".into());
        let e = resolve_serve(&args, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("--bulk-listen") && e.contains("off"), "{e}");
        args.bulk_listen = None;
        args.upload_limit = Some("fast".into());
        let e = resolve_serve(&args, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("--upload-limit"), "{e}");
        args.upload_limit = None;
        args.bootstrap = vec!["not a multiaddr".into()];
        let e = resolve_serve(&args, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("--bootstrap") && e.contains("/p2p/"), "{e}");
        args.bootstrap.clear();
        args.no_p2p = true;
        assert!(resolve_serve(&args, &env_of(&[])).unwrap().p2p.is_none());
    }

    #[test]
    fn bad_values_say_how_to_fix_them() {
        let mut args = ServeArgs {
            upstream: Some("https://u.invalid/".into()),
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        };
        args.page_ttl = Some("soon".into());
        let e = resolve_serve(&args, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("--page-ttl") && e.contains("10m"), "{e}");
        args.page_ttl = None;
        args.cache_size = Some("lots".into());
        let e = resolve_serve(&args, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("--cache-size"), "{e}");
        args.cache_size = None;
        args.upstream = Some("ftp://u.invalid/".into());
        assert!(resolve_serve(&args, &env_of(&[])).is_err());
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
        let args = ServeArgs {
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        };
        let e = resolve_serve(
            &args,
            &env_of(&[
                ("HOME", "/nonexistent"),
                ("PEERPI_PYTHON", "/nonexistent/python3"),
            ]),
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

    #[test]
    fn env_exports_point_at_the_node() {
        assert_eq!(
            env_text(&listen(), EnvFormat::Shell),
            "export PIP_INDEX_URL=http://127.0.0.1:7503/simple/\nexport UV_DEFAULT_INDEX=http://127.0.0.1:7503/simple/\n"
        );
        let lan: SocketAddr = "192.0.2.10:8000".parse().unwrap();
        assert!(env_text(&lan, EnvFormat::Shell).contains("PIP_TRUSTED_HOST=192.0.2.10"));
    }

    /// Every format parses as what it claims to be and names the node.
    #[test]
    fn env_formats_parse_and_point_at_the_node() {
        let lan: SocketAddr = "192.0.2.10:8000".parse().unwrap();
        let url = "http://192.0.2.10:8000/simple/";

        let pip = ini::Ini::load_from_str(&env_text(&lan, EnvFormat::PipConf)).unwrap();
        let global = pip.section(Some("global")).unwrap();
        assert_eq!(global.get("index-url"), Some(url));
        assert_eq!(global.get("trusted-host"), Some("192.0.2.10"));

        let uv: toml::Value = toml::from_str(&env_text(&lan, EnvFormat::UvToml)).unwrap();
        assert_eq!(uv["index"][0]["url"].as_str(), Some(url));
        assert_eq!(uv["index"][0]["default"].as_bool(), Some(true));

        let github = env_text(&lan, EnvFormat::GithubActions);
        assert!(
            github.lines().all(|l| l.split_once('=').is_some()),
            "{github}"
        );
        assert!(github.contains(&format!("UV_DEFAULT_INDEX={url}\n")));

        let gitlab = env_text(&lan, EnvFormat::GitlabCi);
        let docs = yaml_rust2::YamlLoader::load_from_str(&gitlab).unwrap();
        assert_eq!(docs[0]["variables"]["PIP_INDEX_URL"].as_str(), Some(url));
        assert_eq!(
            docs[0]["variables"]["PIP_TRUSTED_HOST"].as_str(),
            Some("192.0.2.10")
        );
    }
}
