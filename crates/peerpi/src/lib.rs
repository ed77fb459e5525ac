//! The `peerpi` command line: configuration layering and subcommands.
