//! The dead letters: messages no rule or device could take, kept for the operator as one JSON
//! object per line in `<queue>/dead-letters.jsonl`, bounded by count (the oldest are let go when
//! the file is rewritten).

use super::DeadLetter;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

pub const FILE: &str = "dead-letters.jsonl";

pub struct DeadLetters {
    path: PathBuf,
    file: File,
    /// Lines in the file (the kept ones are the last `max`).
    lines: u64,
    max: u64,
}

impl DeadLetters {
    /// Open (or create) the file in `dir`; a torn last line from a crash is left for
    /// [`DeadLetters::read`] to skip.
    pub fn open(dir: &Path, max: u64) -> std::io::Result<DeadLetters> {
        let path = dir.join(FILE);
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let lines = BufReader::new(File::open(&path)?).lines().count() as u64;
        Ok(DeadLetters {
            path,
            file,
            lines,
            max,
        })
    }

    /// How many are kept.
    pub fn count(&self) -> u64 {
        self.lines.min(self.max)
    }

    /// Write `letters` (not yet synced: see [`DeadLetters::sync`]); rewrites the file with the
    /// newest `max` once it holds half as many again.
    pub fn add(&mut self, letters: &[DeadLetter]) -> std::io::Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut text = Vec::new();
        for letter in letters {
            serde_json::to_writer(&mut text, letter).map_err(std::io::Error::other)?;
            text.push(b'\n');
        }
        self.file.write_all(&text)?;
        self.lines += letters.len() as u64;
        if self.lines > self.max + self.max / 2 {
            self.rewrite()?;
        }
        Ok(())
    }

    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// The kept dead letters, oldest first (lines that cannot be read, like one torn by a
    /// crash, are skipped).
    pub fn read(&self) -> std::io::Result<Vec<DeadLetter>> {
        read_kept(&self.path, self.max)
    }

    /// Keep only the newest `max`.
    fn rewrite(&mut self) -> std::io::Result<()> {
        let kept = self.read()?;
        self.replace(&kept)
    }

    /// Make `letters` the whole file: written to a new file, synced, then renamed over the old
    /// one (a crash leaves the old file or the new one, never a mix).
    pub fn replace(&mut self, letters: &[DeadLetter]) -> std::io::Result<()> {
        let fresh = self.path.with_extension("jsonl.new");
        {
            let mut out = std::io::BufWriter::new(File::create(&fresh)?);
            for letter in letters {
                serde_json::to_writer(&mut out, letter).map_err(std::io::Error::other)?;
                out.write_all(b"\n")?;
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
        self.lines = letters.len() as u64;
        Ok(())
    }
}

/// The newest `max` dead letters of the file at `path`, oldest first; none when there is no
/// file. Safe while gatehost runs: the file only grows by whole lines or is renamed over.
pub fn read_kept(path: &Path, max: u64) -> std::io::Result<Vec<DeadLetter>> {
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
