//! The store-and-forward queue: translated messages waiting for their device's upstream
//! session, kept in an append-only log of segment files (`<state>/queue/00000001.log`, ...) with
//! an index in memory. Every append is `fdatasync`ed before its local publishers are acknowledged,
//! so a message the local publisher got its PUBACK for survives `kill -9` and power loss (the
//! device workers may already read it while the sync runs). Removals of
//! acknowledged messages are records of their own, written with the next append (or the 10 s
//! expiry tick, or the stop) rather than synced on their own: a crash can only make a message go
//! out twice, never lose one. Messages are kept per device in arrival order (one global sequence
//! number), leave only once the upstream acknowledged them, and the queue is bounded by bytes and
//! age with a counted drop policy. Segments whose messages are all gone are deleted, oldest
//! first; an old segment holding few live messages has them copied forward first, so the files
//! stay within about twice the queued bytes. Dead letters (messages no rule or device could
//! take) are kept apart, bounded, in `dead-letters.jsonl` ([`dead`]).

//!
//! Layout: [`record`] (the byte format of one record), `index` (the queued messages in memory),
//! `segments` (the files and their life), `recovery` (open: reading the log back), `staging`
//! (appends and their syncs), [`dead`] (dead letters); reads and removals are here.

pub mod dead;
mod index;
pub mod record;
mod recovery;
mod segments;
mod staging;
#[cfg(test)]
mod tests;

pub use dead::DeadLetter;
pub(crate) use dead::{dead_letters_in, unreadable_dead_letters_in, DEAD_LETTER_CAUSES};
pub(crate) use staging::Staged;

use crate::model::Message;
use dead::DeadLetters;
use index::{Index, Slot};
use record::Record;
use segments::{segment_name, Log};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue {path} is in use by another gatehost process")]
    InUse { path: PathBuf },
    #[error("cannot create the queue folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the queue file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the queue {path} holds an entry that cannot be read (device '{device}', #{seq})")]
    Corrupt {
        path: PathBuf,
        device: String,
        seq: u64,
    },
}

use crate::config::StoreConfig;
use crate::config::WhenFull;

#[derive(Debug, Clone)]
pub(crate) struct QueueLimits {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub when_full: WhenFull,
    pub max_dead_letters: u64,
    /// Bytes the dead-letter file may hold (its lines as JSON).
    pub max_dead_letter_bytes: u64,
}

impl QueueLimits {
    /// The limits `[store]` sets, the defaults for the rest.
    pub(crate) fn from_config(store: &StoreConfig) -> QueueLimits {
        let default = QueueLimits::default();
        QueueLimits {
            max_bytes: store
                .max_mib
                .map_or(default.max_bytes, |m| m.saturating_mul(1024 * 1024)),
            max_age: store.max_age_hours.map_or(default.max_age, |h| {
                std::time::Duration::from_secs(h.saturating_mul(3600))
            }),
            when_full: store.when_full,
            max_dead_letters: store.max_dead_letters.unwrap_or(default.max_dead_letters),
            max_dead_letter_bytes: store
                .max_dead_letters_mib
                .map_or(default.max_dead_letter_bytes, |m| {
                    m.saturating_mul(1024 * 1024)
                }),
        }
    }
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_bytes: 256 * 1024 * 1024,
            max_age: Duration::from_secs(7 * 24 * 3600),
            when_full: WhenFull::DropOldest,
            max_dead_letters: 10_000,
            max_dead_letter_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A queued message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Queued {
    pub seq: u64,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub enqueued_ms: u64,
    pub message: Message,
}

/// Messages dropped by a limit, by device and cause.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Dropped(pub BTreeMap<(String, &'static str), u64>);

impl Dropped {
    pub(super) fn add(&mut self, device: &str, cause: &'static str) {
        *self.0.entry((device.to_string(), cause)).or_default() += 1;
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One device's share of the queue.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct Depth {
    pub messages: u64,
    pub bytes: u64,
}

/// A message of the batch being appended: device, sequence number, offset in the batch's
/// bytes, record length, size as the limit counts it.
type Added<'a> = (&'a str, u64, u64, u32, u32);

/// What the queue holds, behind one lock: the index, the log, the dead letters.
struct State {
    index: Index,
    log: Log,
    dead: DeadLetters,
}

impl State {
    /// Index a message record (the segments count it live; one it replaces is no longer).
    fn insert(&mut self, device: &str, seq: u64, slot: Slot) {
        if let Some(old) = self.index.insert(device, seq, slot) {
            self.log.release(&old);
        }
        self.log.count(&slot);
    }

    /// Remove `device`'s messages through `seq`; how many and their bytes.
    fn remove_through(&mut self, device: &str, seq: u64) -> (u64, u64) {
        let removed = self.index.remove_through(device, seq);
        self.released(&removed)
    }

    /// Remove `device`'s message `seq`; how many (0 or 1) and its bytes.
    fn remove_one(&mut self, device: &str, seq: u64) -> (u64, u64) {
        let removed = self.index.remove_one(device, seq);
        self.released(removed.as_slice())
    }

    fn released(&mut self, removed: &[Slot]) -> (u64, u64) {
        for slot in removed {
            self.log.release(slot);
        }
        let bytes = removed.iter().map(|slot| u64::from(slot.size)).sum();
        (removed.len() as u64, bytes)
    }
}

pub(crate) struct Queue {
    dir: PathBuf,
    limits: QueueLimits,
    /// A segment is sealed and a new one started once it grows past this.
    segment_bytes: u64,
    state: Mutex<State>,
    /// Held (locked) while the queue is open, so a second process is told it is in use.
    _lock: File,
}

/// The bytes a message takes in the queue, as the limit counts them.
fn size_of(device: &str, message: &Message) -> u64 {
    let properties: usize = message
        .properties
        .iter()
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum();
    (device.len() + message.topic.len() + message.payload.len() + properties + 32) as u64
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Turns an I/O error on `path` into a [`QueueError`].
fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> QueueError {
    let path = path.to_path_buf();
    move |source| QueueError::Io { path, source }
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Up to `max` of `device`'s messages after sequence number `after`, oldest first.
    pub(crate) fn peek(
        &self,
        device: &str,
        after: u64,
        max: usize,
    ) -> Result<Vec<Queued>, QueueError> {
        let mut out = Vec::new();
        // Records no longer in the tail, read from their files once the lock is let go.
        let mut from_disk: Vec<(usize, u64, Slot, Arc<File>)> = Vec::new();
        {
            let state = self.lock();
            let Some(queue) = state.index.devices.get(device) else {
                return Ok(Vec::new());
            };
            for (&seq, slot) in queue.slots.range(after.saturating_add(1)..).take(max) {
                let in_tail =
                    slot.segment == state.log.active && slot.offset >= state.log.tail_start;
                if in_tail {
                    let from = (slot.offset - state.log.tail_start) as usize;
                    let bytes = state.log.tail.get(from..from + slot.len as usize);
                    let record = bytes.and_then(record::read_own);
                    out.push(self.queued(device, seq, record, slot.segment)?);
                } else {
                    let file = state.log.segments[&slot.segment].file.clone();
                    from_disk.push((out.len(), seq, *slot, file));
                    out.push(Queued {
                        seq,
                        enqueued_ms: 0,
                        message: Message::new("", Vec::new(), 0),
                    });
                }
            }
        }
        let mut span = Span::default();
        for (i, (at, seq, slot, file)) in from_disk.iter().enumerate() {
            let path = self.dir.join(segment_name(slot.segment));
            let bytes = span
                .read(file, slot, &from_disk[i..])
                .map_err(io_error(&path))?;
            out[*at] = self.queued(device, *seq, record::read_one(bytes), slot.segment)?;
        }
        Ok(out)
    }

    /// The queued message `seq` of `device` from its record (`None`: it could not be read).
    fn queued(
        &self,
        device: &str,
        seq: u64,
        record: Option<Record>,
        segment: u32,
    ) -> Result<Queued, QueueError> {
        match record {
            Some(Record::Message {
                device: d,
                seq: s,
                enqueued_ms,
                message,
            }) if d == device && s == seq => Ok(Queued {
                seq,
                enqueued_ms,
                message,
            }),
            _ => Err(QueueError::Corrupt {
                path: self.dir.join(segment_name(segment)),
                device: device.to_string(),
                seq,
            }),
        }
    }

    /// Remove `device`'s messages up to and including sequence number `through` (the upstream
    /// acknowledged them).
    ///
    /// The removal is written with the next append, not synced on its own: a crash before that
    /// only sends these messages again (at least once), and saves a sync per acknowledged
    /// window while messages flow.
    pub(crate) fn remove_through(&self, device: &str, through: u64) -> Result<u64, QueueError> {
        let mut state = self.lock();
        let (removed, _) = state.remove_through(device, through);
        if removed > 0 {
            record::write_removal(&mut state.log.pending, device, through, true);
        }
        Ok(removed)
    }

    /// Make every earlier removal durable: called when the bridge stops, so a clean restart
    /// sends nothing twice.
    pub fn sync(&self) -> Result<(), QueueError> {
        self.flush(self.lock())
    }

    /// Drop every message older than the age limit, tidy the segments and sync; what was
    /// dropped.
    pub(crate) fn expire(&self) -> Result<Dropped, QueueError> {
        let limit = now_ms().saturating_sub(self.limits.max_age.as_millis() as u64);
        let mut dropped = Dropped::default();
        let mut state = self.lock();
        let expired: Vec<(String, u64)> = state
            .index
            .devices
            .iter()
            .filter_map(|(device, queue)| {
                let last_old = queue
                    .slots
                    .iter()
                    .take_while(|(_, slot)| slot.enqueued_ms < limit)
                    .last()?;
                Some((device.clone(), *last_old.0))
            })
            .collect();
        for (device, through) in expired {
            let (n, _) = state.remove_through(&device, through);
            record::write_removal(&mut state.log.pending, &device, through, true);
            *dropped.0.entry((device, "too old")).or_default() += n;
        }
        self.tidy(&mut state)?;
        self.flush(state)?;
        Ok(dropped)
    }

    /// Every device with messages queued, and how many.
    pub(crate) fn depths(&self) -> BTreeMap<String, Depth> {
        self.lock()
            .index
            .devices
            .iter()
            .map(|(device, queue)| {
                let depth = Depth {
                    messages: queue.slots.len() as u64,
                    bytes: queue.bytes,
                };
                (device.clone(), depth)
            })
            .collect()
    }

    /// Bytes queued, as the limit counts them.
    pub fn bytes(&self) -> u64 {
        self.lock().index.bytes
    }

    /// When `device`'s oldest queued message was stored (ms since the epoch).
    pub(crate) fn oldest_ms(&self, device: &str) -> Option<u64> {
        let state = self.lock();
        let queue = state.index.devices.get(device)?;
        queue.slots.values().next().map(|slot| slot.enqueued_ms)
    }

    /// How many dead letters are kept.
    pub(crate) fn dead_letter_count(&self) -> u64 {
        self.lock().dead.count()
    }

    /// The kept dead letters, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        let path = self.dir.join(dead::FILE);
        self.lock().dead.read().map_err(io_error(&path))
    }

    /// The lines of the dead-letter file that cannot be read, one sentence each (they are kept).
    pub(crate) fn unreadable_dead_letters(&self) -> Vec<String> {
        dead::unreadable(&self.dir.join(dead::FILE))
    }

    /// Make `letters` the kept dead letters, replacing the file (after a replay took some).
    pub(crate) fn replace_dead_letters(&self, letters: &[DeadLetter]) -> Result<(), QueueError> {
        let path = self.dir.join(dead::FILE);
        self.lock().dead.replace(letters).map_err(io_error(&path))
    }

    /// The queue's folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The segment files on disk and their total size.
    #[cfg(test)]
    fn segments(&self) -> (usize, u64) {
        let state = self.lock();
        let bytes = state.log.segments.values().map(|s| s.len).sum();
        (state.log.segments.len(), bytes)
    }
}

impl Drop for Queue {
    /// Closing the queue writes and syncs the removals still pending (a crash skips this,
    /// which only sends those messages again).
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::warn!("the queue could not be synced when closed (acknowledged messages may be sent again): {e}");
        }
    }
}

/// Reads of neighbouring records in one go: `peek` asks for a device's messages in order,
/// and they usually sit close together in one segment between other devices' messages.
#[derive(Default)]
struct Span {
    file: Option<Arc<File>>,
    start: u64,
    bytes: Vec<u8>,
}

/// A span read at once is at most this large.
const SPAN_MAX: u64 = 256 * 1024;

impl Span {
    /// The record of `slot`, read with the records after it in `wanted` that fit in one span.
    fn read(
        &mut self,
        file: &Arc<File>,
        slot: &Slot,
        wanted: &[(usize, u64, Slot, Arc<File>)],
    ) -> std::io::Result<&[u8]> {
        let end = slot.offset + u64::from(slot.len);
        let covered = self.file.as_ref().is_some_and(|f| Arc::ptr_eq(f, file))
            && slot.offset >= self.start
            && end <= self.start + self.bytes.len() as u64;
        if !covered {
            // Extend to the later wanted records of the same file, within SPAN_MAX.
            let span_end = wanted
                .iter()
                .take_while(|(_, _, s, f)| {
                    Arc::ptr_eq(f, file)
                        && s.offset >= slot.offset
                        && s.offset + u64::from(s.len) - slot.offset <= SPAN_MAX
                })
                .map(|(_, _, s, _)| s.offset + u64::from(s.len))
                .max()
                .unwrap_or(end)
                .max(end);
            self.bytes.resize((span_end - slot.offset) as usize, 0);
            file.read_exact_at(&mut self.bytes, slot.offset)?;
            self.file = Some(file.clone());
            self.start = slot.offset;
        }
        let from = (slot.offset - self.start) as usize;
        Ok(&self.bytes[from..from + slot.len as usize])
    }
}
