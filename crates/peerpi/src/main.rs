//! The `peerpi` binary.

use std::process::ExitCode;

use clap::FromArgMatches;
use peerpi::cli::{Cli, Command, LogFormat};
use peerpi::config;
use tracing_subscriber::EnvFilter;

/// Logs to stderr at the level `RUST_LOG` asks (info by default), each
/// call site rate-limited so that no peer can flood the log.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let limit = peerpi::logging::RateLimit::new();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt.json().with_filter(limit.clone()).boxed(),
        LogFormat::Text => fmt.with_filter(limit.clone()).boxed(),
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    limit.summarise_periodically();
}

fn main() -> ExitCode {
    peerpi::memory::limit_arenas();
    let cli = match Cli::from_arg_matches(&peerpi::cli::command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Serve(args) => args.resolve(&config::process_env).and_then(|config| {
            init_logging(config.log_format);
            peerpi::memory::trim_periodically();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(peerpi::serve::run(config))
        }),
        Command::Env(args) => peerpi::env::run(&args),
        Command::Id(args) => peerpi::id::run(&args),
        Command::Keygen(args) => peerpi::keygen::run(&args),
        Command::Peers(args) => peerpi::peers::run(&args),
        Command::Tuf(args) => peerpi::tuf::run(*args),
        Command::Doctor(args) => peerpi::doctor::run(&args),
        Command::Prefetch(args) => peerpi::prefetch::run(&args),
        Command::Verify(args) => peerpi::verify::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerpi: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
