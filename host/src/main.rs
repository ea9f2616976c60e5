//! The `gatehost` binary: parse the command line, set up logging, run the command.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = gatehost::cli::Cli::parse();
    gatehost::cli::init_tracing(cli.log_format);
    gatehost::cli::main(cli)
}
