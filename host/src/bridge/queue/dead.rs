//! The dead letters: messages no rule or device could take, kept for the operator as one JSON
//! object per line in `<queue>/dead-letters.jsonl`, bounded by count and by bytes (the oldest
//! are let go when the file is rewritten). A line that cannot be read (damaged on disk, or
//! written by a future version) is named wherever the letters are read and kept as it is by
//! every rewrite: nothing there is dropped without a word.

use super::{io_error, QueueError};
use crate::model::Message;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Every dead-letter cause (`DeadLetter::cause`).
pub(crate) const DEAD_LETTER_CAUSES: [&str; 6] = [
    "rule error",
    "unknown device",
    "too large",
    "not publishable",
    "upstream refused",
    "no rule",
];

/// A message set aside: it matched a rule that failed on it, or named no usable device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub at_ms: u64,
    /// The rule that handled it (empty when none did).
    pub rule: String,
    /// A constant phrase for counting (`rule error`, `unknown device`, `too large`, ...).
    pub cause: String,
    /// One sentence: what went wrong.
    pub reason: String,
    pub message: Message,
    /// The device the message was translated for, when it was set aside after translation
    /// (`unknown device`, `too large`, `not publishable`, `upstream refused`): `message` is then
    /// the translated message. `None` when no rule translated it (`rule error`, `no rule`):
    /// `message` is then the message as it arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// A cloud-to-device message: the device whose cloud session received it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_cloud: Option<String>,
}

/// One sentence for each line of the dead-letter file in the queue folder `dir` that cannot be
/// read (such lines are kept).
pub(crate) fn unreadable_dead_letters_in(dir: &Path) -> Vec<String> {
    unreadable(&dir.join(FILE))
}

/// The kept dead letters of the queue in `dir`, oldest first, read without opening the queue
/// (so also while gatehost runs on it); none when it has none.
pub(crate) fn dead_letters_in(
    dir: &Path,
    max_dead_letters: u64,
) -> Result<Vec<DeadLetter>, QueueError> {
    let path = dir.join(FILE);
    read_kept(&path, max_dead_letters).map_err(io_error(&path))
}

pub(crate) const FILE: &str = "dead-letters.jsonl";

pub(crate) struct DeadLetters {
    path: PathBuf,
    file: File,
    /// Lines in the file (the kept ones are the last `max`).
    lines: u64,
    /// Bytes in the file.
    bytes: u64,
    max: u64,
    max_bytes: u64,
}

impl DeadLetters {
    /// Open (or create) the file in `dir`. A last line without its newline was torn by a crash
    /// (its letter was never written whole, so its message was never acknowledged): it is cut
    /// off, so that the next letter starts a line of its own.
    pub fn open(dir: &Path, max: u64, max_bytes: u64) -> std::io::Result<DeadLetters> {
        let path = dir.join(FILE);
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let text = std::fs::read(&path)?;
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if whole < text.len() {
            tracing::warn!(file = %path.display(), "the last dead letter was cut short by a crash; its {} bytes are discarded", text.len() - whole);
            file.set_len(whole as u64)?;
        }
        let lines = text[..whole].iter().filter(|&&b| b == b'\n').count() as u64;
        Ok(DeadLetters {
            path,
            file,
            lines,
            bytes: whole as u64,
            max,
            max_bytes,
        })
    }

    /// How many are kept.
    pub fn count(&self) -> u64 {
        self.lines.min(self.max)
    }

    /// Write `letters` (not yet synced: see [`DeadLetters::sync`]); rewrites the file with the
    /// newest that fit the limits once it holds half as many again, or half as many bytes
    /// again. A letter that alone is larger than the byte limit keeps its reason but not its
    /// payload (which it says).
    pub fn add(&mut self, letters: &[DeadLetter]) -> std::io::Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut text = Vec::new();
        for letter in letters {
            let start = text.len();
            serde_json::to_writer(&mut text, letter).map_err(std::io::Error::other)?;
            if (text.len() - start) as u64 > self.max_bytes {
                text.truncate(start);
                let mut small = letter.clone();
                let size = small.message.payload.len();
                small.message.payload.clear();
                small.reason.push_str(&format!(
                    " (its {size}-byte payload was not kept: larger than [store] max_dead_letters_mib)"
                ));
                serde_json::to_writer(&mut text, &small).map_err(std::io::Error::other)?;
            }
            text.push(b'\n');
        }
        self.file.write_all(&text)?;
        self.lines += letters.len() as u64;
        self.bytes += text.len() as u64;
        if self.lines > self.max + self.max / 2 || self.bytes > self.max_bytes + self.max_bytes / 2
        {
            self.rewrite()?;
        }
        Ok(())
    }

    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// The kept dead letters, oldest first (see [`unreadable`] for the lines that cannot be
    /// read).
    pub fn read(&self) -> std::io::Result<Vec<DeadLetter>> {
        read_kept(&self.path, self.max)
    }

    /// Keep only the newest that fit the limits.
    fn rewrite(&mut self) -> std::io::Result<()> {
        let mut kept = self.read()?;
        let mut bytes = 0u64;
        let mut from = kept.len();
        while from > 0 {
            let size = serde_json::to_vec(&kept[from - 1]).map_or(0, |v| v.len() as u64 + 1);
            if bytes + size > self.max_bytes {
                break;
            }
            bytes += size;
            from -= 1;
        }
        let kept = kept.split_off(from);
        self.replace(&kept)
    }

    /// Make `letters` the whole file, after the lines that cannot be read (kept as they are):
    /// written to a new file, synced, then renamed over the old one (a crash leaves the old
    /// file or the new one, never a mix).
    pub fn replace(&mut self, letters: &[DeadLetter]) -> std::io::Result<()> {
        let unreadable = unreadable_lines(&self.path)?;
        let fresh = self.path.with_extension("jsonl.new");
        let mut lines = 0u64;
        let mut bytes = 0u64;
        {
            let mut out = std::io::BufWriter::new(File::create(&fresh)?);
            for (_, raw) in &unreadable {
                out.write_all(raw.as_bytes())?;
                out.write_all(b"\n")?;
                lines += 1;
                bytes += raw.len() as u64 + 1;
            }
            for letter in letters {
                let json = serde_json::to_vec(letter).map_err(std::io::Error::other)?;
                out.write_all(&json)?;
                out.write_all(b"\n")?;
                lines += 1;
                bytes += json.len() as u64 + 1;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&fresh, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        self.lines = lines;
        self.bytes = bytes;
        Ok(())
    }
}

/// The newest `max` dead letters of the file at `path`, oldest first; none when there is no
/// file. Safe while gatehost runs: the file only grows by whole lines or is renamed over.
pub(crate) fn read_kept(path: &Path, max: u64) -> std::io::Result<Vec<DeadLetter>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut all: Vec<DeadLetter> = Vec::new();
    for line in BufReader::new(file).lines() {
        if let Ok(letter) = serde_json::from_str(&line?) {
            all.push(letter);
        }
    }
    let skip = all
        .len()
        .saturating_sub(usize::try_from(max).unwrap_or(usize::MAX));
    Ok(all.split_off(skip))
}

/// Whole lines of the file that are not dead letters: (line number from 1, text, why).
fn unreadable_lines(path: &Path) -> std::io::Result<Vec<(usize, String)>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    Ok(text[..whole]
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty() && serde_json::from_slice::<DeadLetter>(line).is_err())
        .map(|(i, line)| (i + 1, String::from_utf8_lossy(line).into_owned()))
        .collect())
}

/// One sentence for each line of the dead-letter file at `path` that cannot be read.
pub(crate) fn unreadable(path: &Path) -> Vec<String> {
    let lines = match unreadable_lines(path) {
        Ok(lines) => lines,
        Err(e) => return vec![format!("{} cannot be read: {e}", path.display())],
    };
    lines
        .into_iter()
        .map(|(n, raw)| {
            let why = serde_json::from_str::<DeadLetter>(&raw)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            format!(
                "line {n} of {} is not a dead letter gatehost can read ({why}); it is kept as it is",
                path.display()
            )
        })
        .collect()
}
