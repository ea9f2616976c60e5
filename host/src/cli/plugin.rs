//! `gatehost plugin ...`: list the plugins this gateway can see (packaging comes later).

use super::{not_yet, print_json, ConfigArg, NotYet};
use crate::plugins::registry::Registry;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// List the plugins found in the plugin directories, with kind, engine and permissions.
    #[command(after_help = "Example:\n  gatehost plugin list --json")]
    List(ListArgs),
    /// Create a plugin skeleton.
    New(NotYet),
    /// Pack a plugin directory into a bundle.
    Pack(NotYet),
    /// Create a publisher signing key pair.
    Keygen(NotYet),
    /// Sign a bundle.
    Sign(NotYet),
    /// Verify a bundle's signature and contents.
    Verify(NotYet),
    /// Install a bundle.
    Install(NotYet),
    /// Remove an installed plugin.
    Remove(NotYet),
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print one JSON object per plugin.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Row<'a> {
    name: &'a str,
    version: &'a str,
    kind: String,
    engine: String,
    api: &'a str,
    publisher: Option<&'a str>,
    endpoints: &'a [String],
    file_roots: &'a [String],
    path: String,
    status: String,
}

pub fn run(cmd: PluginCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PluginCommand::List(args) => list(args),
        PluginCommand::New(_) => not_yet("plugin new"),
        PluginCommand::Pack(_) => not_yet("plugin pack"),
        PluginCommand::Keygen(_) => not_yet("plugin keygen"),
        PluginCommand::Sign(_) => not_yet("plugin sign"),
        PluginCommand::Verify(_) => not_yet("plugin verify"),
        PluginCommand::Install(_) => not_yet("plugin install"),
        PluginCommand::Remove(_) => not_yet("plugin remove"),
    }
}

fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let registry = Registry::load(config.plugin_env(true));
    let rows: Vec<Row> = registry
        .plugins()
        .map(|p| {
            let m = &p.info.manifest;
            Row {
                name: &m.name,
                version: &m.version,
                kind: m.kind.to_string(),
                engine: p.info.engine.to_string(),
                api: &m.api,
                publisher: m.publisher.as_deref(),
                endpoints: &m.permissions.endpoints,
                file_roots: &m.permissions.file_roots,
                path: p.info.entry.display().to_string(),
                status: "loaded".into(),
            }
        })
        .collect();
    if args.json {
        for row in &rows {
            print_json(row);
        }
    } else {
        println!(
            "{:<24} {:<9} {:<5} {:<6} {:<5} PERMISSIONS",
            "NAME", "VERSION", "KIND", "ENGINE", "API"
        );
        for r in &rows {
            let mut perms: Vec<String> = r.endpoints.iter().map(|e| format!("net:{e}")).collect();
            perms.extend(r.file_roots.iter().map(|f| format!("files:{f}")));
            let perms = if perms.is_empty() {
                "-".to_string()
            } else {
                perms.join(" ")
            };
            println!(
                "{:<24} {:<9} {:<5} {:<6} {:<5} {perms}",
                r.name, r.version, r.kind, r.engine, r.api
            );
        }
    }
    for e in registry.errors() {
        eprintln!("error: {e}");
    }
    Ok(if registry.errors().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
