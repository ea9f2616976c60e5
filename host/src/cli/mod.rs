//! The `gatehost` command line: clap definitions and dispatch. One file per command group; errors
//! become one line on stderr and a non-zero exit code.

/// `println!` for command output: a closed stdout (`gatehost ... | head -1`) ends the command
/// quietly with success, as the reader wanted no more; any other write error is one sentence on
/// stderr and exit code 1. Never a panic.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

mod certs;
mod check;
mod dead_letters;
mod onboard;
mod plugin;
mod rule;
mod run;
mod sandbox;
mod sign;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "gatehost",
    version,
    about = "IoT gateway runtime: onboard devices to clouds and translate their topics with WASM or Rhai plugins",
    after_help = "Example:\n  gatehost rule test iothub-telemetry --topic plant1/press7/temperature --payload '{\"value\":21.5}'"
)]
pub struct Cli {
    /// Log line format on stderr (level filter: RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The config file option shared by most commands.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// Config file [default: gatehost.toml; built-in defaults when it does not exist]
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    pub fn load(&self) -> Result<crate::config::Config, crate::config::ConfigError> {
        match &self.config {
            Some(path) => crate::config::Config::load(path, true),
            None => crate::config::Config::load(
                std::path::Path::new(crate::config::DEFAULT_CONFIG),
                false,
            ),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: onboard devices, run the bridge, hot reload.
    #[command(after_help = "Example:\n  gatehost run --config examples/quickstart.toml")]
    Run(run::RunArgs),
    /// Run one device's onboarding flow (or reuse its kept connection) and print the connection.
    #[command(
        after_help = "Example:\n  gatehost onboard press7 --config gatehost.toml\n  gatehost onboard press7 --force --json"
    )]
    Onboard(onboard::OnboardArgs),
    /// Validate the config, the plugins and their permissions; exit non-zero on any error.
    #[command(after_help = "Example:\n  gatehost check --config gatehost.toml")]
    Check(check::CheckArgs),
    /// Work with topic-translation rules.
    #[command(subcommand)]
    Rule(rule::RuleCommand),
    /// List, create, package and install plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Keys, CSRs and certificates (mirrors the providers' OpenSSL steps).
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Azure SAS tokens, derived device keys and JWTs.
    #[command(subcommand)]
    Sign(sign::SignCommand),
    /// List the messages the bridge set aside, and replay them once their cause is fixed.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLettersCommand),
    /// Start the local provider emulators (DPS, IoT Hub, MindConnect, AWS IoT).
    #[command(after_help = "Example:\n  gatehost sandbox --config sandbox.toml")]
    Sandbox(sandbox::SandboxArgs),
}

pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal, and not when NO_COLOR is set (no-color.org):
    // journald, files and pipes get plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Run a parsed command line; print any error as one line on stderr.
pub fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Onboard(args) => onboard::run(args),
        Command::Check(args) => check::run(args),
        Command::Rule(cmd) => rule::run(cmd),
        Command::Plugin(cmd) => plugin::run(cmd),
        Command::Certs(cmd) => certs::run(cmd),
        Command::Sign(cmd) => sign::run(cmd),
        Command::Sandbox(args) => sandbox::run(args),
        Command::DeadLetters(cmd) => dead_letters::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatehost: {}", error_sentence(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes as one line: "outer: cause: root cause".
fn error_sentence(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}

/// Write one line of command output (see `outln!`).
pub(crate) fn write_stdout(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(line)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "gatehost: cannot write to standard output: {e}"
            );
            std::process::exit(1);
        }
    }
}

/// Print one value as JSON on stdout.
pub(crate) fn print_json(value: &impl serde::Serialize) {
    outln!(
        "{}",
        serde_json::to_string(value).expect("CLI output serializes")
    );
}
