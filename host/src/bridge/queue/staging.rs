//! Appending: messages are written to the log and indexed under the lock (the byte limit applied
//! by its drop policy), and synced outside it, so one sync covers every append before it; the
//! local publishers are acknowledged once it returns. Also the removals and dead letters that
//! set a message aside.

use super::dead::{self, DeadLetter};
use super::index::Slot;
use super::record;
use super::{io_error, now_ms, size_of, Added, Dropped, Queue, QueueError, State, WhenFull};
use crate::model::Message;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, MutexGuard};

/// Messages written to the log and indexed by [`Queue::stage`], not yet durable.
#[must_use = "staged messages are durable only once synced"]
pub(crate) struct Staged {
    file: Arc<File>,
    path: PathBuf,
    pub(super) dropped: Dropped,
}

impl Staged {
    /// Sync the file this append went to.
    pub(super) fn sync_file(&self) -> Result<(), QueueError> {
        self.file.sync_data().map_err(io_error(&self.path))
    }

    /// Make several staged appends durable with one sync per file they went to (a sync covers
    /// every write to its file before it): each one's dropped messages, or why its file could
    /// not be synced.
    pub(crate) fn sync_all(staged: Vec<Staged>) -> Vec<Result<Dropped, String>> {
        let mut synced: Vec<(Arc<File>, Result<(), String>)> = Vec::new();
        staged
            .into_iter()
            .map(|s| {
                let known = synced.iter().find(|(f, _)| Arc::ptr_eq(f, &s.file));
                let result = match known {
                    Some((_, result)) => result.clone(),
                    None => {
                        let result = s.sync_file().map_err(|e| e.to_string());
                        synced.push((s.file.clone(), result.clone()));
                        result
                    }
                };
                result.map(|()| s.dropped)
            })
            .collect()
    }
}

impl Queue {
    /// [`Queue::stage`] and sync at once (the bridge syncs on its own thread; replaying dead
    /// letters does not): what the byte limit made drop.
    pub(crate) fn append(
        &self,
        messages: &[(String, Message)],
        dead_letters: &[DeadLetter],
    ) -> Result<Dropped, QueueError> {
        let staged = self.stage(messages, dead_letters)?;
        staged.sync_file()?;
        Ok(staged.dropped)
    }

    /// Write messages for their devices to the log and index them, and set dead letters aside,
    /// without syncing the log: the device workers can read the messages at once, but they are
    /// durable (and their local publishers may be acknowledged) only once synced
    /// ([`Staged::sync_all`]). Forwarding a message before it is durable is safe: if gatehost
    /// dies first, its publisher was never acknowledged and sends it again (at least once).
    pub(crate) fn stage(
        &self,
        messages: &[(String, Message)],
        dead_letters: &[DeadLetter],
    ) -> Result<Staged, QueueError> {
        let now = now_ms();
        let mut dropped = Dropped::default();
        let mut state = self.lock();
        self.rotate_if_full(&mut state)?;
        let mut out = Vec::with_capacity(messages.len() * 160);
        // `None` once dropped again to make room.
        let mut added: Vec<Option<Added>> = Vec::with_capacity(messages.len());
        let mut admitted_bytes = 0u64;
        for (device, message) in messages {
            let size = size_of(device, message);
            let mut total = state.index.bytes + admitted_bytes;
            if total + size > self.limits.max_bytes {
                match self.limits.when_full {
                    WhenFull::DropNewest => {
                        dropped.add(device, "queue full");
                        continue;
                    }
                    WhenFull::DropOldest => {
                        while total + size > self.limits.max_bytes {
                            let victim = match self.drop_oldest(&mut state, &mut out) {
                                Some(victim) => victim,
                                // Nothing older is stored: the oldest of this batch goes.
                                None => match added.iter_mut().find(|a| a.is_some()) {
                                    Some(entry) => {
                                        let (device, seq, _, _, size) =
                                            entry.take().expect("found as some");
                                        admitted_bytes -= u64::from(size);
                                        record::write_removal(&mut out, device, seq, false);
                                        device.to_string()
                                    }
                                    None => break,
                                },
                            };
                            dropped.add(&victim, "queue full");
                            total = state.index.bytes + admitted_bytes;
                        }
                        if total + size > self.limits.max_bytes {
                            // Larger than the whole queue (or than what this batch left room for).
                            dropped.add(device, "queue full");
                            continue;
                        }
                    }
                }
            }
            let seq = state.index.next_seq;
            state.index.next_seq += 1;
            let offset = out.len() as u64;
            let len = record::write_message(&mut out, device, seq, now, message);
            added.push(Some((device, seq, offset, len as u32, size as u32)));
            admitted_bytes += size;
        }
        let (file, base) = match state.log.write(&out) {
            Ok(written) => written,
            Err(e) => {
                state.index.next_seq -= added.len() as u64;
                return Err(io_error(&state.log.active().path)(e));
            }
        };
        let segment = state.log.active;
        for (device, seq, offset, len, size) in added.into_iter().flatten() {
            let slot = Slot {
                enqueued_ms: now,
                segment,
                offset: base + offset,
                len,
                size,
            };
            state.insert(device, seq, slot);
        }
        if !dead_letters.is_empty() {
            let path = self.dir.join(dead::FILE);
            state
                .dead
                .add(dead_letters)
                .and_then(|()| state.dead.sync())
                .map_err(io_error(&path))?;
        }
        let path = state.log.active().path.clone();
        Ok(Staged {
            file,
            path,
            dropped,
        })
    }

    /// Remove the oldest message of all devices (its removal record goes to `out`); its device.
    pub(super) fn drop_oldest(&self, state: &mut State, out: &mut Vec<u8>) -> Option<String> {
        let (device, seq) = state
            .index
            .devices
            .iter()
            .filter_map(|(d, q)| q.slots.keys().next().map(|&seq| (d, seq)))
            .min_by_key(|&(_, seq)| seq)
            .map(|(d, seq)| (d.clone(), seq))?;
        state.remove_one(&device, seq);
        record::write_removal(out, &device, seq, true);
        Some(device)
    }

    /// Move `device`'s message `seq` to the dead letters as `letter`, durably (the messages
    /// around it stay queued).
    pub(crate) fn set_aside(
        &self,
        device: &str,
        seq: u64,
        letter: &DeadLetter,
    ) -> Result<(), QueueError> {
        let mut state = self.lock();
        if state.remove_one(device, seq).0 > 0 {
            record::write_removal(&mut state.log.pending, device, seq, false);
        }
        let path = self.dir.join(dead::FILE);
        state
            .dead
            .add(std::slice::from_ref(letter))
            .and_then(|()| state.dead.sync())
            .map_err(io_error(&path))?;
        self.flush(state)
    }

    /// Write the pending removals and sync, releasing the lock before the sync.
    pub(super) fn flush(&self, mut state: MutexGuard<'_, State>) -> Result<(), QueueError> {
        let path = state.log.active().path.clone();
        let (file, _) = state.log.write(&[]).map_err(io_error(&path))?;
        drop(state);
        file.sync_data().map_err(io_error(&path))
    }
}
