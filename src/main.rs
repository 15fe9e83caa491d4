//! `mc` binary: parse and validate configuration, start the shards, run the control thread.

use std::process::ExitCode;

use clap::Parser;

use mc::config::{Cli, Command, EXIT_USAGE};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.to_string();
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            eprintln!("mc: {}", line.trim_start_matches("error: "));
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
    let code = match cli.command {
        Command::Serve(args) => mc::app::serve(*args),
        Command::Token(args) => mc::app::token(args),
        Command::Admin(args) => mc::app::admin(args),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
