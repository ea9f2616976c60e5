//! Replaying dead letters once their cause is fixed (a rule repaired, a device added to the
//! config): each selected letter is judged again by the current config and rules, what it now
//! sends upstream is queued for its device, and the letters replayed leave the dead letters.
//! A letter that still cannot go stays, with the reason. Replay writes the queue, which a
//! running gatehost owns, so it runs while gatehost is stopped; the next `gatehost run`
//! forwards what it queued. Queuing comes first and removing the letters second: a crash in
//! between replays them again (duplicates, never losses).

use super::chain::RuleChain;
use super::local::{as_queued, upstream_refusal};
use super::queue::{DeadLetter, Dropped, Queue, QueueError};
use crate::config::Config;
use crate::model::{Destination, Message};
use crate::plugins::registry::PluginEnv;
use crate::plugins::registry::Registry;

/// Which dead letters to replay: those matching every filter given.
#[derive(Debug, Default, Clone)]
pub struct Selection {
    pub rule: Option<String>,
    pub cause: Option<String>,
    /// The device a letter was translated for, or whose cloud session received it.
    pub device: Option<String>,
}

impl Selection {
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let device = letter.device.as_deref().or(letter.from_cloud.as_deref());
        self.rule.as_ref().is_none_or(|r| *r == letter.rule)
            && self.cause.as_ref().is_none_or(|c| *c == letter.cause)
            && self
                .device
                .as_ref()
                .is_none_or(|d| Some(d.as_str()) == device)
    }
}

/// What becomes of one dead letter.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Queued again: its messages for devices (none when its rule now drops it).
    Replay(Vec<(String, Message)>),
    /// Stays a dead letter, for this reason.
    Keep(String),
}

/// Judge `letter` by the current `config` and `chain`.
pub(crate) fn judge(config: &Config, chain: &RuleChain, letter: &DeadLetter) -> Verdict {
    if let Some(device) = &letter.from_cloud {
        return Verdict::Keep(format!(
            "a cloud-to-device message of '{device}': replay queues messages for the cloud only"
        ));
    }
    if let Some(device) = &letter.device {
        return match upstream_refusal(config, device, &letter.message) {
            Some((_, why)) => Verdict::Keep(why),
            None => Verdict::Replay(vec![(device.clone(), as_queued(letter.message.clone()))]),
        };
    }
    if letter.cause != "rule error" {
        return Verdict::Keep(format!(
            "the '{}' letter does not name the device it was for (kept by an earlier gatehost)",
            letter.cause
        ));
    }
    let topic = &letter.message.topic;
    let Some(rule) = chain.rules.iter().find(|r| r.name == letter.rule) else {
        return Verdict::Keep(format!(
            "rule '{}' is not running (not in the config, or its plugin does not load)",
            letter.rule
        ));
    };
    if !rule.receives(topic) {
        return Verdict::Keep(format!(
            "rule '{}' no longer receives '{topic}' (its `from` filters changed)",
            rule.name
        ));
    }
    let outputs = match rule.plugin.translate(&letter.message) {
        Ok(outputs) => outputs,
        Err(e) => return Verdict::Keep(format!("{} still fails: {e}", rule.source)),
    };
    let mut messages = Vec::with_capacity(outputs.len());
    for out in outputs {
        match out.destination {
            Destination::Local => {
                return Verdict::Keep(format!(
                    "{} now sends a message to the local broker, which replay cannot reach",
                    rule.source
                ))
            }
            Destination::Upstream(device) => {
                if let Some((_, why)) = upstream_refusal(config, &device, &out.message) {
                    return Verdict::Keep(why);
                }
                messages.push((device, as_queued(out.message)));
            }
        }
    }
    Verdict::Replay(messages)
}

/// What a replay did (or, dry, would do).
#[derive(Debug, Default)]
pub struct Report {
    /// Letters replayed and how many messages each queued.
    pub replayed: Vec<(DeadLetter, usize)>,
    /// Selected letters that stay, with the reason.
    pub kept: Vec<(DeadLetter, String)>,
    /// Letters not selected.
    pub untouched: usize,
    /// Replayed messages the queue's byte limit dropped (`when_full`).
    pub dropped: Dropped,
    /// Rules that do not run (broken plugin or template), one sentence each.
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}: stop `gatehost run` on this config first (replay writes to the queue)")]
    InUse(QueueError),
    #[error(transparent)]
    Queue(QueueError),
}

impl From<QueueError> for ReplayError {
    fn from(e: QueueError) -> Self {
        match e {
            e @ QueueError::InUse { .. } => ReplayError::InUse(e),
            e => ReplayError::Queue(e),
        }
    }
}

/// Replay the dead letters `selection` picks from the queue of `config` (nothing is written
/// when `dry_run`).
pub fn replay(
    config: &Config,
    selection: &Selection,
    dry_run: bool,
) -> Result<Report, ReplayError> {
    let queue = Queue::open(
        &config.queue_path(),
        crate::bridge::queue::QueueLimits::from_config(&config.store),
    )?;
    let registry = Registry::load(PluginEnv::of(config, true));
    let (chain, mut problems) = RuleChain::build(config, &registry, None);
    problems.extend(queue.unreadable_dead_letters());
    let mut report = Report {
        problems,
        ..Report::default()
    };
    let mut staying = Vec::new();
    let mut messages = Vec::new();
    for letter in queue.dead_letters()? {
        if !selection.matches(&letter) {
            report.untouched += 1;
            staying.push(letter);
            continue;
        }
        match judge(config, &chain, &letter) {
            Verdict::Replay(queued) => {
                report.replayed.push((letter, queued.len()));
                messages.extend(queued);
            }
            Verdict::Keep(why) => {
                staying.push(letter.clone());
                report.kept.push((letter, why));
            }
        }
    }
    if !dry_run && !report.replayed.is_empty() {
        report.dropped = queue.append(&messages, &[])?;
        queue.replace_dead_letters(&staying)?;
    }
    Ok(report)
}

/// Drop the dead letters `selection` picks from the queue of `config` for good (those that
/// cannot be replayed and are not wanted): how many were dropped and how many are kept.
pub(crate) fn drop_letters(
    config: &Config,
    selection: &Selection,
) -> Result<(usize, usize), ReplayError> {
    let queue = Queue::open(
        &config.queue_path(),
        crate::bridge::queue::QueueLimits::from_config(&config.store),
    )?;
    let (dropped, kept): (Vec<_>, Vec<_>) = queue
        .dead_letters()?
        .into_iter()
        .partition(|l| selection.matches(l));
    if !dropped.is_empty() {
        queue.replace_dead_letters(&kept)?;
    }
    Ok((dropped.len(), kept.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::queue::QueueLimits;

    fn letter(rule: &str, cause: &str, device: Option<&str>, payload: &[u8]) -> DeadLetter {
        DeadLetter {
            at_ms: 1,
            rule: rule.into(),
            cause: cause.into(),
            reason: "why".into(),
            message: Message::new("plant/dev01/t", payload.to_vec(), 2),
            device: device.map(str::to_string),
            from_cloud: None,
        }
    }

    /// A config in `dir` with device `dev01` and the template rule `plant/{machine}/#`.
    fn config(dir: &std::path::Path) -> Config {
        let path = dir.join("gatehost.toml");
        std::fs::write(
            &path,
            "plugin_dirs = []\n[[devices]]\nname = \"dev01\"\nflow = \"aws-iot\"\n[devices.params]\nendpoint = \"localhost\"\n\n[[rules]]\nname = \"plant\"\n[rules.template]\npattern = \"plant/{machine}/#\"\ndevice = \"{machine}\"\ntopic = \"dt/{machine}\"\n",
        )
        .unwrap();
        Config::load(&path, true).unwrap()
    }

    #[test]
    fn letters_are_judged_by_the_current_config_and_rules() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let registry = Registry::load(PluginEnv::of(&config, false));
        let (chain, problems) = RuleChain::build(&config, &registry, None);
        assert!(problems.is_empty(), "{problems:?}");

        // A rule error: translated again by the rule, QoS 2 queued as 1.
        let Verdict::Replay(out) =
            judge(&config, &chain, &letter("plant", "rule error", None, b"x"))
        else {
            panic!("not replayed");
        };
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].0.as_str(), out[0].1.topic.as_str(), out[0].1.qos),
            ("dev01", "dt/dev01", 1)
        );
        // Translated for a device that is now listed: queued as it is.
        let known = letter("", "unknown device", Some("dev01"), b"y");
        assert!(
            matches!(judge(&config, &chain, &known), Verdict::Replay(m) if m[0].1.payload == b"y")
        );
        // Each reason to stay.
        let cases = [
            (
                letter("plant", "unknown device", Some("dev09"), b"z"),
                "no device 'dev09'",
            ),
            (
                letter("plant", "too large", Some("dev01"), &vec![0; 300 * 1024]),
                "over the upstream limit",
            ),
            (
                letter("gone", "rule error", None, b"x"),
                "rule 'gone' is not running",
            ),
            (
                letter("plant", "unknown device", None, b"x"),
                "does not name the device",
            ),
        ];
        for (letter, expected) in cases {
            match judge(&config, &chain, &letter) {
                Verdict::Keep(why) => assert!(why.contains(expected), "{why}"),
                other => panic!("{other:?} for {letter:?}"),
            }
        }
        let mut cloud = letter("plant", "rule error", None, b"x");
        cloud.from_cloud = Some("dev01".into());
        assert!(
            matches!(judge(&config, &chain, &cloud), Verdict::Keep(why) if why.contains("cloud-to-device"))
        );
    }

    #[test]
    fn a_replay_queues_the_selected_letters_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        {
            let queue = Queue::open(&config.queue_path(), QueueLimits::default()).unwrap();
            let letters = [
                letter("plant", "rule error", None, b"1"),
                letter("plant", "too large", Some("dev01"), &vec![0; 300 * 1024]),
                letter("other", "rule error", None, b"3"),
            ];
            queue.append(&[], &letters).unwrap();
        }
        let only_plant = Selection {
            rule: Some("plant".into()),
            ..Selection::default()
        };
        let dry = replay(&config, &only_plant, true).unwrap();
        assert_eq!(
            (dry.replayed.len(), dry.kept.len(), dry.untouched),
            (1, 1, 1)
        );

        let report = replay(&config, &only_plant, false).unwrap();
        assert_eq!(
            (report.replayed.len(), report.kept.len(), report.untouched),
            (1, 1, 1)
        );
        let queue = Queue::open(&config.queue_path(), QueueLimits::default()).unwrap();
        let queued = queue.peek("dev01", 0, 10).unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].message.payload, b"1");
        let left: Vec<_> = queue
            .dead_letters()
            .unwrap()
            .into_iter()
            .map(|l| l.cause)
            .collect();
        assert_eq!(left, ["too large", "rule error"]);
        drop(queue);

        // Dropping takes the selected ones for good.
        let too_large = Selection {
            cause: Some("too large".into()),
            ..Selection::default()
        };
        assert_eq!(drop_letters(&config, &too_large).unwrap(), (1, 1));
        let queue = Queue::open(&config.queue_path(), QueueLimits::default()).unwrap();
        let left: Vec<_> = queue
            .dead_letters()
            .unwrap()
            .into_iter()
            .map(|l| l.rule)
            .collect();
        assert_eq!(left, ["other"]);
        drop(queue);

        // Nothing left to replay for that selection: nothing queued twice.
        let again = replay(&config, &only_plant, false).unwrap();
        assert!(again.replayed.is_empty());
        let queue = Queue::open(&config.queue_path(), QueueLimits::default()).unwrap();
        assert_eq!(queue.peek("dev01", 0, 10).unwrap().len(), 1);
        // While the queue is open (gatehost running), replay refuses.
        let busy = replay(&config, &only_plant, false).unwrap_err();
        assert!(busy.to_string().contains("stop `gatehost run`"), "{busy}");
    }
}
