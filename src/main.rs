//! `mc` binary: parse and validate configuration, start the shards, run the control thread.

use std::process::ExitCode;

use clap::Parser;

use mc::config::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return ExitCode::from(mc::config::clap_exit(&e) as u8),
    };
    let code = match cli.command {
        Command::Serve(args) => mc::app::serve(*args),
        Command::Token(args) => mc::app::token(args),
        Command::Admin(args) => mc::app::admin(args),
    };
    // Log lines still queued go out, unless stderr stays blocked.
    mc::logging::flush(std::time::Duration::from_secs(2));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
