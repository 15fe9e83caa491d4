//! `mc-loadtest`: a load generator speaking signaling v1 to the meeting controller.
//!
//! See `docs/performance.md` for how to run it and what it reports.

mod accounting;
mod ack;
mod cli;
mod clock;
mod cpu;
mod hlog;
mod inbound;
mod kernel;
mod limits;
mod metrics;
mod payload;
mod plan;
mod plot;
mod report;
mod rolling;
mod run;
mod stats;
mod timer;
mod transport;
mod udp;
mod worker;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = match cli::Args::try_parse() {
        Ok(a) => a,
        Err(e) => return ExitCode::from(mc::config::clap_exit(&e) as u8),
    };
    if args.scenario == cli::Scenario::RollingDrain {
        return rolling_drain(&args);
    }
    let settings = match args.validate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mc-loadtest: {e}");
            return ExitCode::from(cli::EXIT_USAGE as u8);
        }
    };
    match run::run(settings) {
        Ok(report) => output(&report),
        Err(e) => {
            eprintln!("mc-loadtest: {e:#}");
            if e.downcast_ref::<run::Usage>().is_some() {
                ExitCode::from(cli::EXIT_USAGE as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn rolling_drain(args: &cli::Args) -> ExitCode {
    let settings = match args.rolling() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mc-loadtest: {e}");
            return ExitCode::from(cli::EXIT_USAGE as u8);
        }
    };
    match rolling::run(settings) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("mc-loadtest: meetings ended, participants or messages were lost");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("mc-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn output(report: &report::Report) -> ExitCode {
    let table = report.to_table();
    if report.settings.json {
        eprint!("{table}");
        println!("{:#}", report.to_json());
    } else {
        print!("{table}");
    }
    if let Some(path) = &report.settings.plot {
        let title = format!(
            "mc-loadtest {}: latency by percentile, measured window",
            report.settings.scenario.name()
        );
        let svg = plot::render(
            &title,
            &[
                ("delivery", &report.latencies.delivery),
                ("join", &report.latencies.join),
                ("handshake", &report.latencies.handshake),
            ],
        );
        if let Err(e) = std::fs::write(path, svg) {
            eprintln!("mc-loadtest: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
