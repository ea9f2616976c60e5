//! The store-and-forward queue: translated messages waiting for their device's upstream
//! session, kept in one crash-safe `redb` file (`<state>/queue.redb`). Every append is durable
//! before it returns, so a message the local publisher got its PUBACK for survives `kill -9`
//! and power loss. Removals of acknowledged messages are not synced on their own but with the
//! next append (or the 10 s expiry tick, or the stop): a crash can only make a message go out
//! twice, never lose one. Messages are kept per device in arrival order (one global sequence number),
//! leave only once the upstream acknowledged them, and the file is bounded by bytes and age
//! with a counted drop policy. Dead letters (messages no rule or device could take) are kept in
//! a second, bounded table for the operator.

use crate::model::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// (device, sequence number) → encoded [`Message`] with its enqueue time.
const QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue");
/// Sequence number → JSON [`DeadLetter`].
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue {path} is in use by another gatehost process")]
    InUse { path: PathBuf },
    #[error("cannot create the queue folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the queue {path}: {source}")]
    Store { path: PathBuf, source: redb::Error },
    #[error("the queue {path} holds an entry that cannot be read (device '{device}', #{seq})")]
    Corrupt {
        path: PathBuf,
        device: String,
        seq: u64,
    },
}

/// What to do with a new message when the queue is at its byte limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Make room by dropping the oldest queued messages (of any device).
    #[default]
    DropOldest,
    /// Keep what is queued and drop the new message.
    DropNewest,
}

#[derive(Debug, Clone)]
pub struct QueueLimits {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub when_full: WhenFull,
    pub max_dead_letters: u64,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_bytes: 256 * 1024 * 1024,
            max_age: Duration::from_secs(7 * 24 * 3600),
            when_full: WhenFull::DropOldest,
            max_dead_letters: 10_000,
        }
    }
}

/// A queued message.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub seq: u64,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub enqueued_ms: u64,
    pub message: Message,
}

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
}

/// Messages dropped by a limit, by device and cause.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Dropped(pub BTreeMap<(String, &'static str), u64>);

impl Dropped {
    fn add(&mut self, device: &str, cause: &'static str) {
        *self.0.entry((device.to_string(), cause)).or_default() += 1;
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One device's share of the queue.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Depth {
    pub messages: u64,
    pub bytes: u64,
}

#[derive(Default)]
struct Counts {
    next_seq: u64,
    by_device: BTreeMap<String, Depth>,
    bytes: u64,
    next_dead: u64,
    dead: u64,
}

pub struct Queue {
    db: Database,
    path: PathBuf,
    limits: QueueLimits,
    counts: Mutex<Counts>,
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

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Queue {
    /// Open (or create) the queue at `path`, repairing it after a crash.
    pub fn open(path: &Path, limits: QueueLimits) -> Result<Queue, QueueError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| QueueError::Folder {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(QueueError::InUse {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => {
                return Err(QueueError::Store {
                    path: path.to_path_buf(),
                    source: e.into(),
                })
            }
        };
        let queue = Queue {
            db,
            path: path.to_path_buf(),
            limits,
            counts: Mutex::new(Counts::default()),
        };
        queue.recount()?;
        Ok(queue)
    }

    fn err<E: Into<redb::Error>>(&self, e: E) -> QueueError {
        QueueError::Store {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count what the file holds (at open).
    fn recount(&self) -> Result<(), QueueError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        // Sequence numbers start at 1: `peek(device, 0, n)` reads from the start.
        let mut counts = Counts {
            next_seq: 1,
            ..Counts::default()
        };
        {
            let queue = tx.open_table(QUEUE).map_err(|e| self.err(e))?;
            for entry in queue.iter().map_err(|e| self.err(e))? {
                let (key, value) = entry.map_err(|e| self.err(e))?;
                let (device, seq) = key.value();
                let message = decode(value.value()).ok_or_else(|| QueueError::Corrupt {
                    path: self.path.clone(),
                    device: device.to_string(),
                    seq,
                })?;
                let size = size_of(device, &message.1);
                let depth = counts.by_device.entry(device.to_string()).or_default();
                depth.messages += 1;
                depth.bytes += size;
                counts.bytes += size;
                counts.next_seq = counts.next_seq.max(seq + 1);
            }
            let dead = tx.open_table(DEAD).map_err(|e| self.err(e))?;
            counts.dead = dead.len().map_err(|e| self.err(e))?;
            let last = dead.last().map_err(|e| self.err(e))?;
            counts.next_dead = last.map_or(0, |(key, _)| key.value() + 1);
        }
        tx.commit().map_err(|e| self.err(e))?;
        *self.counts() = counts;
        Ok(())
    }

    /// Store messages for their devices and set dead letters aside, in one durable commit.
    /// Returns what the byte limit made drop.
    pub fn append(
        &self,
        messages: &[(String, Message)],
        dead_letters: &[DeadLetter],
    ) -> Result<Dropped, QueueError> {
        let now = now_ms();
        let mut dropped = Dropped::default();
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let mut counts = self.counts();
        let before_next = (counts.next_seq, counts.next_dead, counts.dead);
        let saved: BTreeMap<String, Depth> = counts.by_device.clone();
        let saved_bytes = counts.bytes;
        let result: Result<(), QueueError> = (|| {
            let mut queue = tx.open_table(QUEUE).map_err(|e| self.err(e))?;
            for (device, message) in messages {
                let size = size_of(device, message);
                if counts.bytes + size > self.limits.max_bytes {
                    match self.limits.when_full {
                        WhenFull::DropNewest => {
                            dropped.add(device, "queue full");
                            continue;
                        }
                        WhenFull::DropOldest => {
                            while counts.bytes + size > self.limits.max_bytes {
                                match self.drop_oldest(&mut queue, &mut counts)? {
                                    Some(victim) => dropped.add(&victim, "queue full"),
                                    None => break,
                                }
                            }
                            if counts.bytes + size > self.limits.max_bytes {
                                // Larger than the whole queue.
                                dropped.add(device, "queue full");
                                continue;
                            }
                        }
                    }
                }
                let seq = counts.next_seq;
                counts.next_seq += 1;
                queue
                    .insert((device.as_str(), seq), encode(now, message).as_slice())
                    .map_err(|e| self.err(e))?;
                let depth = counts.by_device.entry(device.clone()).or_default();
                depth.messages += 1;
                depth.bytes += size;
                counts.bytes += size;
            }
            drop(queue);
            self.keep_dead_letters(&tx, &mut counts, dead_letters)
        })();
        let committed = result.and_then(|()| tx.commit().map_err(|e| self.err(e)));
        if let Err(e) = committed {
            // Nothing of this batch is stored: put the counts back.
            (counts.next_seq, counts.next_dead, counts.dead) = before_next;
            counts.by_device = saved;
            counts.bytes = saved_bytes;
            return Err(e);
        }
        Ok(dropped)
    }

    /// Add `letters` to the dead letters, dropping the oldest beyond the limit.
    fn keep_dead_letters(
        &self,
        tx: &redb::WriteTransaction,
        counts: &mut Counts,
        letters: &[DeadLetter],
    ) -> Result<(), QueueError> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut dead = tx.open_table(DEAD).map_err(|e| self.err(e))?;
        for letter in letters {
            let json = serde_json::to_vec(letter).unwrap_or_default();
            dead.insert(counts.next_dead, json.as_slice())
                .map_err(|e| self.err(e))?;
            counts.next_dead += 1;
            counts.dead += 1;
        }
        while counts.dead > self.limits.max_dead_letters {
            if dead.pop_first().map_err(|e| self.err(e))?.is_none() {
                break;
            }
            counts.dead -= 1;
        }
        Ok(())
    }

    /// Move `device`'s message `seq` to the dead letters as `letter`, in one durable commit
    /// (the messages around it stay queued).
    pub fn set_aside(&self, device: &str, seq: u64, letter: &DeadLetter) -> Result<(), QueueError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let mut counts = self.counts();
        let before = (counts.next_dead, counts.dead);
        let result = (|| {
            let removed = {
                let mut queue = tx.open_table(QUEUE).map_err(|e| self.err(e))?;
                let old = queue.remove((device, seq)).map_err(|e| self.err(e))?;
                old.map(|v| decode(v.value()).map_or(0, |(_, m)| size_of(device, &m)))
            };
            self.keep_dead_letters(&tx, &mut counts, std::slice::from_ref(letter))?;
            Ok(removed)
        })();
        match result.and_then(|removed| tx.commit().map_err(|e| self.err(e)).map(|()| removed)) {
            Ok(removed) => {
                if let Some(size) = removed {
                    forget(&mut counts, device, 1, size);
                }
                Ok(())
            }
            Err(e) => {
                (counts.next_dead, counts.dead) = before;
                Err(e)
            }
        }
    }

    /// Remove the oldest message of all devices; its device.
    fn drop_oldest(
        &self,
        queue: &mut redb::Table<(&str, u64), &[u8]>,
        counts: &mut Counts,
    ) -> Result<Option<String>, QueueError> {
        let mut oldest: Option<(String, u64)> = None;
        for (device, depth) in &counts.by_device {
            if depth.messages == 0 {
                continue;
            }
            let first = queue
                .range((device.as_str(), 0)..=(device.as_str(), u64::MAX))
                .map_err(|e| self.err(e))?
                .next();
            if let Some(entry) = first {
                let (key, _) = entry.map_err(|e| self.err(e))?;
                let seq = key.value().1;
                if oldest.as_ref().is_none_or(|(_, s)| seq < *s) {
                    oldest = Some((device.clone(), seq));
                }
            }
        }
        let Some((device, seq)) = oldest else {
            return Ok(None);
        };
        if let Some(old) = queue
            .remove((device.as_str(), seq))
            .map_err(|e| self.err(e))?
        {
            let size = decode(old.value()).map_or(0, |(_, m)| size_of(&device, &m));
            forget(counts, &device, 1, size);
        }
        Ok(Some(device))
    }

    /// Up to `max` of `device`'s messages after sequence number `after`, oldest first.
    pub fn peek(&self, device: &str, after: u64, max: usize) -> Result<Vec<Queued>, QueueError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let queue = match tx.open_table(QUEUE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let start = after.saturating_add(1);
        let mut out = Vec::new();
        for entry in queue
            .range((device, start)..=(device, u64::MAX))
            .map_err(|e| self.err(e))?
            .take(max)
        {
            let (key, value) = entry.map_err(|e| self.err(e))?;
            let seq = key.value().1;
            let (enqueued_ms, message) =
                decode(value.value()).ok_or_else(|| QueueError::Corrupt {
                    path: self.path.clone(),
                    device: device.to_string(),
                    seq,
                })?;
            out.push(Queued {
                seq,
                enqueued_ms,
                message,
            });
        }
        Ok(out)
    }

    /// Remove `device`'s messages up to and including sequence number `through` (the upstream
    /// acknowledged them).
    ///
    /// The removal is not flushed to disk on its own: it becomes durable with the next append.
    /// A crash before that only sends these messages again (at least once), and saves a sync
    /// per acknowledged window while messages flow.
    pub fn remove_through(&self, device: &str, through: u64) -> Result<u64, QueueError> {
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(redb::Durability::None)
            .map_err(|e| self.err(redb::Error::from(e)))?;
        let mut removed = (0u64, 0u64);
        {
            let mut queue = tx.open_table(QUEUE).map_err(|e| self.err(e))?;
            queue
                .retain_in((device, 0)..=(device, through), |_, value| {
                    removed.0 += 1;
                    removed.1 += decode(value).map_or(0, |(_, m)| size_of(device, &m));
                    false
                })
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        forget(&mut self.counts(), device, removed.0, removed.1);
        Ok(removed.0)
    }

    /// Make every earlier commit durable (the removals that were not synced on their own):
    /// called when the bridge stops, so a clean restart sends nothing twice.
    pub fn sync(&self) -> Result<(), QueueError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Drop every message older than the age limit; what was dropped.
    pub fn expire(&self) -> Result<Dropped, QueueError> {
        let limit = now_ms().saturating_sub(self.limits.max_age.as_millis() as u64);
        let devices: Vec<String> = self.counts().by_device.keys().cloned().collect();
        let mut dropped = Dropped::default();
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let mut gone = Vec::new();
        {
            let mut queue = tx.open_table(QUEUE).map_err(|e| self.err(e))?;
            for device in &devices {
                let mut expired = (0u64, 0u64);
                let mut young = false;
                queue
                    .retain_in(
                        (device.as_str(), 0)..=(device.as_str(), u64::MAX),
                        |_, value| {
                            if young {
                                return true;
                            }
                            match decode(value) {
                                Some((at, m)) if at < limit => {
                                    expired.0 += 1;
                                    expired.1 += size_of(device, &m);
                                    false
                                }
                                _ => {
                                    young = true;
                                    true
                                }
                            }
                        },
                    )
                    .map_err(|e| self.err(e))?;
                if expired.0 > 0 {
                    gone.push((device.clone(), expired));
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        let mut counts = self.counts();
        for (device, (messages, bytes)) in gone {
            forget(&mut counts, &device, messages, bytes);
            *dropped.0.entry((device, "too old")).or_default() += messages;
        }
        Ok(dropped)
    }

    /// Every device with messages queued, and how many.
    pub fn depths(&self) -> BTreeMap<String, Depth> {
        self.counts()
            .by_device
            .iter()
            .filter(|(_, d)| d.messages > 0)
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Bytes queued, as the limit counts them.
    pub fn bytes(&self) -> u64 {
        self.counts().bytes
    }

    /// When `device`'s oldest queued message was stored (ms since the epoch).
    pub fn oldest_ms(&self, device: &str) -> Option<u64> {
        self.peek(device, 0, 1)
            .ok()
            .and_then(|q| q.first().map(|m| m.enqueued_ms))
    }

    /// How many dead letters are kept.
    pub fn dead_letter_count(&self) -> u64 {
        self.counts().dead
    }

    /// The kept dead letters, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let dead = match tx.open_table(DEAD) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut out = Vec::new();
        for entry in dead.iter().map_err(|e| self.err(e))? {
            let (_, value) = entry.map_err(|e| self.err(e))?;
            if let Ok(letter) = serde_json::from_slice(value.value()) {
                out.push(letter);
            }
        }
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn forget(counts: &mut Counts, device: &str, messages: u64, bytes: u64) {
    if let Some(depth) = counts.by_device.get_mut(device) {
        depth.messages = depth.messages.saturating_sub(messages);
        depth.bytes = depth.bytes.saturating_sub(bytes);
    }
    counts.bytes = counts.bytes.saturating_sub(bytes);
}

/// `enqueued_ms (u64) | qos (u8) | retain (u8) | topic (u16 len + bytes) | property count (u16),
/// each key and value (u16 len + bytes) | payload (the rest)`, big-endian.
fn encode(enqueued_ms: u64, m: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + m.topic.len() + m.payload.len());
    out.extend_from_slice(&enqueued_ms.to_be_bytes());
    out.push(m.qos);
    out.push(u8::from(m.retain));
    let string = |out: &mut Vec<u8>, s: &str| {
        let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    string(&mut out, &m.topic);
    out.extend_from_slice(&(m.properties.len().min(u16::MAX as usize) as u16).to_be_bytes());
    for (k, v) in m.properties.iter().take(u16::MAX as usize) {
        string(&mut out, k);
        string(&mut out, v);
    }
    out.extend_from_slice(&m.payload);
    out
}

fn decode(bytes: &[u8]) -> Option<(u64, Message)> {
    let mut r = Reader { bytes, at: 0 };
    let enqueued_ms = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let qos = r.take(1)?[0];
    let retain = r.take(1)?[0] != 0;
    let topic = r.string()?;
    let count = r.u16()? as usize;
    let mut properties = Vec::with_capacity(count);
    for _ in 0..count {
        properties.push((r.string()?, r.string()?));
    }
    let payload = bytes.get(r.at..)?.to_vec();
    Some((
        enqueued_ms,
        Message {
            topic,
            payload,
            qos,
            retain,
            properties,
        },
    ))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let part = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(part)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let len = self.u16()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &[u8]) -> Message {
        Message::new(topic, payload.to_vec(), 1)
    }

    #[test]
    fn entries_round_trip_with_properties_and_binary_payloads() {
        let mut m = msg("devices/d/messages/events/", &[0, 255, 10, 13]);
        m.properties = vec![("k".into(), "v ü".into()), (String::new(), String::new())];
        m.retain = true;
        let (at, back) = decode(&encode(42, &m)).unwrap();
        assert_eq!((at, back), (42, m));
        assert!(decode(&[1, 2, 3]).is_none());
    }

    #[test]
    fn a_message_set_aside_leaves_its_neighbours_queued() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("q.redb"), QueueLimits::default()).unwrap();
        let batch: Vec<(String, Message)> = (0..3)
            .map(|i| ("d".to_string(), msg("t", format!("{i}").as_bytes())))
            .collect();
        q.append(&batch, &[]).unwrap();
        let queued = q.peek("d", 0, 10).unwrap();
        let letter = DeadLetter {
            at_ms: 1,
            rule: String::new(),
            cause: "not publishable".into(),
            reason: "no".into(),
            message: queued[1].message.clone(),
        };
        q.set_aside("d", queued[1].seq, &letter).unwrap();
        let left: Vec<_> = q.peek("d", 0, 10).unwrap();
        assert_eq!(
            left.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [queued[0].seq, queued[2].seq]
        );
        assert_eq!(q.depths()["d"].messages, 2);
        assert_eq!(q.dead_letters().unwrap(), vec![letter]);
    }

    #[test]
    fn messages_stay_in_order_per_device_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        {
            let q = Queue::open(&path, QueueLimits::default()).unwrap();
            let batch: Vec<(String, Message)> = (0..10)
                .map(|i| {
                    let device = if i % 2 == 0 { "a" } else { "b" };
                    (device.to_string(), msg("t", format!("{i}").as_bytes()))
                })
                .collect();
            q.append(&batch, &[]).unwrap();
            let a = q.peek("a", 0, 100).unwrap();
            let payloads: Vec<_> = a.iter().map(|m| m.message.payload.clone()).collect();
            assert_eq!(
                payloads,
                ["0", "2", "4", "6", "8"].map(|s| s.as_bytes().to_vec())
            );
            assert_eq!(q.remove_through("a", a[1].seq).unwrap(), 2);
        }
        let q = Queue::open(&path, QueueLimits::default()).unwrap();
        assert_eq!(q.depths()["a"].messages, 3);
        assert_eq!(q.depths()["b"].messages, 5);
        assert_eq!(q.peek("a", 0, 1).unwrap()[0].message.payload, b"4");
        // New messages come after the old ones.
        q.append(&[("a".into(), msg("t", b"new"))], &[]).unwrap();
        assert_eq!(
            q.peek("a", 0, 10).unwrap().last().unwrap().message.payload,
            b"new"
        );
    }

    #[test]
    fn a_full_queue_drops_by_its_policy_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let one = size_of("d", &msg("t", &[0; 100]));
        let limits = QueueLimits {
            max_bytes: one * 3,
            ..QueueLimits::default()
        };
        let q = Queue::open(&dir.path().join("q.redb"), limits.clone()).unwrap();
        let batch: Vec<_> = (0..5u8)
            .map(|i| ("d".to_string(), msg("t", &[i; 100])))
            .collect();
        let dropped = q.append(&batch, &[]).unwrap();
        assert_eq!(dropped.0[&("d".to_string(), "queue full")], 2);
        let kept: Vec<u8> = q
            .peek("d", 0, 10)
            .unwrap()
            .iter()
            .map(|m| m.message.payload[0])
            .collect();
        assert_eq!(kept, [2, 3, 4]);

        let newest = QueueLimits {
            when_full: WhenFull::DropNewest,
            ..limits
        };
        let q = Queue::open(&dir.path().join("q2.redb"), newest).unwrap();
        q.append(&batch, &[]).unwrap();
        let kept: Vec<u8> = q
            .peek("d", 0, 10)
            .unwrap()
            .iter()
            .map(|m| m.message.payload[0])
            .collect();
        assert_eq!(kept, [0, 1, 2]);
    }

    #[test]
    fn old_messages_expire_and_dead_letters_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let limits = QueueLimits {
            max_age: Duration::ZERO,
            max_dead_letters: 2,
            ..QueueLimits::default()
        };
        let q = Queue::open(&dir.path().join("q.redb"), limits).unwrap();
        q.append(&[("d".into(), msg("t", b"x"))], &[]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let dropped = q.expire().unwrap();
        assert_eq!(dropped.0[&("d".to_string(), "too old")], 1);
        assert!(q.depths().is_empty());
        let letter = |n: u8| DeadLetter {
            at_ms: 1,
            rule: "r".into(),
            cause: "rule error".into(),
            reason: format!("no {n}"),
            message: msg("t", &[n]),
        };
        q.append(&[], &[letter(1), letter(2), letter(3)]).unwrap();
        let kept = q.dead_letters().unwrap();
        assert_eq!(kept, vec![letter(2), letter(3)]);
    }

    #[test]
    fn a_second_process_is_told_the_queue_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        let _first = Queue::open(&path, QueueLimits::default()).unwrap();
        let second = Queue::open(&path, QueueLimits::default()).err().unwrap();
        assert!(second.to_string().contains("in use"), "{second}");
    }
}
