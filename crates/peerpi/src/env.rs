//! `peerpi env`: prints what points pip and uv at the node, as shell
//! exports, a pip.conf, a uv.toml or CI variables.

use std::net::SocketAddr;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::config::{self, args::CommonArgs, node_base_url, node_host};

#[derive(Debug, Clone, Default, Args)]
pub struct EnvArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// shell: `eval "$(peerpi env)"`; pip-conf: a pip.conf; uv-toml: a
    /// uv.toml; github-actions: `peerpi env --format github-actions >>
    /// "$GITHUB_ENV"`; gitlab-ci: a `variables:` block.
    #[arg(long, value_enum, default_value_t = EnvFormat::Shell)]
    pub format: EnvFormat,
}

/// What `peerpi env` prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum EnvFormat {
    #[default]
    Shell,
    PipConf,
    UvToml,
    GithubActions,
    GitlabCi,
}

pub fn run(args: &EnvArgs) -> Result<()> {
    let place = config::locate(&args.common, &config::process_env)?;
    let listen = config::resolve_listen(place.listen.as_deref())?;
    print!("{}", env_text(&listen, args.format));
    Ok(())
}

/// What points pip and uv at the node listening on `listen`, in `format`.
pub fn env_text(listen: &SocketAddr, format: EnvFormat) -> String {
    let host = node_host(listen);
    let url = format!("{}/simple/", node_base_url(listen));
    // pip refuses plain-HTTP hosts other than loopback unless trusted.
    let trusted = (!listen.ip().is_loopback() && !listen.ip().is_unspecified()).then_some(host);
    let mut vars = vec![
        ("PIP_INDEX_URL", url.clone()),
        ("UV_DEFAULT_INDEX", url.clone()),
    ];
    if let Some(host) = &trusted {
        vars.push(("PIP_TRUSTED_HOST", host.clone()));
    }
    match format {
        EnvFormat::Shell => vars
            .iter()
            .map(|(k, v)| format!("export {k}={v}\n"))
            .collect(),
        EnvFormat::GithubActions => vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect(),
        EnvFormat::GitlabCi => {
            let mut out = "variables:\n".to_string();
            for (k, v) in &vars {
                out.push_str(&format!("  {k}: \"{v}\"\n"));
            }
            out
        }
        EnvFormat::PipConf => {
            let mut out = format!("[global]\nindex-url = {url}\n");
            if let Some(host) = &trusted {
                out.push_str(&format!("trusted-host = {host}\n"));
            }
            out
        }
        EnvFormat::UvToml => format!("[[index]]\nurl = \"{url}\"\ndefault = true\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen() -> SocketAddr {
        config::DEFAULT_LISTEN.parse().unwrap()
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
