//! `gatehost dead-letters list|replay`: show the messages the bridge set aside (any time, also
//! while gatehost runs) and queue them again once their cause is fixed (with gatehost stopped).

use super::{print_json, ConfigArg};
use crate::bridge::queue::{dead_letters_in, DeadLetter, DEAD_LETTER_CAUSES};
use crate::bridge::replay::{self, Selection};
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum DeadLettersCommand {
    /// List the kept dead letters, oldest first (safe while gatehost runs).
    #[command(
        after_help = "Examples:\n  gatehost dead-letters list --config gatehost.toml\n  gatehost dead-letters list --cause \"rule error\" --rule line4 --json | jq .message.topic"
    )]
    List(ListArgs),
    /// Queue dead letters for their devices again once their cause is fixed (a rule repaired, a
    /// device added); replayed letters leave the list. Stop `gatehost run` first.
    #[command(
        after_help = "Examples:\n  gatehost dead-letters replay --rule line4 --dry-run\n  gatehost dead-letters replay --cause \"unknown device\" --device press9"
    )]
    Replay(ReplayArgs),
    /// Delete the selected dead letters for good (at least one filter, or --all). Stop
    /// `gatehost run` first.
    #[command(
        after_help = "Examples:\n  gatehost dead-letters drop --cause \"too large\"\n  gatehost dead-letters drop --all"
    )]
    Drop(DropArgs),
}

/// Which letters a command takes: those matching every filter given.
#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// Only letters of this rule.
    #[arg(long)]
    pub rule: Option<String>,
    /// Only letters of this cause.
    #[arg(long, value_parser = DEAD_LETTER_CAUSES)]
    pub cause: Option<String>,
    /// Only letters for this device (or from its cloud session).
    #[arg(long)]
    pub device: Option<String>,
}

impl FilterArgs {
    fn selection(&self) -> Selection {
        Selection {
            rule: self.rule.clone(),
            cause: self.cause.clone(),
            device: self.device.clone(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// One JSON object per line, as kept in the file.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Say what would be replayed and what would stay; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct DropArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Every dead letter (instead of filters).
    #[arg(long, conflicts_with_all = ["rule", "cause", "device"])]
    pub all: bool,
}

pub fn run(cmd: DeadLettersCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DeadLettersCommand::List(args) => list(args),
        DeadLettersCommand::Replay(args) => replay(args),
        DeadLettersCommand::Drop(args) => drop_letters(args),
    }
}

fn drop_letters(args: DropArgs) -> anyhow::Result<ExitCode> {
    let f = &args.filter;
    if !args.all && f.rule.is_none() && f.cause.is_none() && f.device.is_none() {
        anyhow::bail!("say which dead letters to drop (--rule, --cause, --device), or --all");
    }
    let config = args.config.load()?;
    for line in crate::bridge::queue::unreadable_dead_letters_in(&config.queue_path()) {
        eprintln!("warning: {line}");
    }
    let (dropped, kept) = replay::drop_letters(&config, &f.selection())?;
    outln!("{dropped} dead letter(s) dropped, {kept} kept");
    Ok(ExitCode::SUCCESS)
}

fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let dir = config.queue_path();
    let limits = crate::bridge::queue::QueueLimits::from_config(&config.store);
    let selection = args.filter.selection();
    for line in crate::bridge::queue::unreadable_dead_letters_in(&dir) {
        eprintln!("warning: {line}");
    }
    let letters: Vec<DeadLetter> = dead_letters_in(&dir, limits.max_dead_letters)?
        .into_iter()
        .filter(|l| selection.matches(l))
        .collect();
    if args.json {
        for letter in &letters {
            print_json(letter);
        }
        return Ok(ExitCode::SUCCESS);
    }
    for letter in &letters {
        outln!("{}", describe(letter));
        outln!("    {}", letter.reason);
    }
    outln!(
        "{} dead letter(s) shown, from {}",
        letters.len(),
        dir.join("dead-letters.jsonl").display()
    );
    Ok(ExitCode::SUCCESS)
}

fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let report = replay::replay(&config, &args.filter.selection(), args.dry_run)?;
    for problem in &report.problems {
        eprintln!("warning: {problem}");
    }
    let (done, stay) = if args.dry_run {
        ("would replay", "would stay")
    } else {
        ("replayed", "stays")
    };
    for (letter, messages) in &report.replayed {
        outln!(
            "{done}: {} -> {messages} message(s) queued",
            describe(letter)
        );
    }
    for (letter, why) in &report.kept {
        outln!("{stay}: {}\n    {why}", describe(letter));
    }
    for ((device, cause), n) in &report.dropped.0 {
        eprintln!("warning: {n} replayed message(s) of '{device}' dropped: {cause} (see [store] in the config)");
    }
    outln!(
        "{} of {} selected dead letter(s) {done}, {} {stay}; {} not selected",
        report.replayed.len(),
        report.replayed.len() + report.kept.len(),
        report.kept.len(),
        report.untouched
    );
    Ok(ExitCode::SUCCESS)
}

/// One line: when, cause, rule, device, topic and size.
fn describe(letter: &DeadLetter) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(letter.at_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| letter.at_ms.to_string());
    let rule = if letter.rule.is_empty() {
        "-"
    } else {
        &letter.rule
    };
    let device = match (&letter.device, &letter.from_cloud) {
        (Some(d), _) => format!("for {d}"),
        (None, Some(d)) => format!("from the cloud of {d}"),
        (None, None) => "no device yet".into(),
    };
    format!(
        "{at}  [{}]  rule {rule}, {device}: '{}' ({} bytes)",
        letter.cause,
        letter.message.topic,
        letter.message.payload.len()
    )
}
