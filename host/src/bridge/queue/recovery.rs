//! Opening a queue: taking its lock, reading every segment back (a record cut short by a crash
//! ends its segment; damage between intact records loses only what it held), and rebuilding
//! the index from the records.

use super::dead::{self, DeadLetters};
use super::index::{Index, Slot};
use super::record::{self, Record};
use super::segments::{segment_ids, segment_name, Log, Segment};
use super::{io_error, size_of, Queue, QueueError, QueueLimits, State};
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::{Arc, Mutex};

impl Queue {
    /// Open (or create) the queue in the folder `dir`, reading back what it holds; a record cut
    /// short by a crash ends its segment (its append never returned, so nothing acknowledged is
    /// lost).
    pub fn open(dir: &Path, limits: QueueLimits) -> Result<Queue, QueueError> {
        let folder_error = |source| QueueError::Folder {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(folder_error)?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(QueueError::InUse {
                    path: dir.to_path_buf(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error(&lock_path)(e)),
        }
        let dead = DeadLetters::open(dir, limits.max_dead_letters, limits.max_dead_letter_bytes)
            .map_err(io_error(&dir.join(dead::FILE)))?;
        let mut state = State {
            index: Index::new(),
            log: Log::new(),
            dead,
        };
        let ids = segment_ids(dir).map_err(folder_error)?;
        for (i, &id) in ids.iter().enumerate() {
            let path = dir.join(segment_name(id));
            let bytes = std::fs::read(&path).map_err(io_error(&path))?;
            let scan = record::scan(&bytes);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_error(&path))?;
            if !scan.damaged.is_empty() {
                // Damage between intact records: what it held is lost (a message, or a
                // removal, whose message is then sent once more), every intact record after
                // it is kept. Not a torn write: those were acknowledged.
                let bytes_lost: u64 = scan.damaged.iter().map(|(_, len)| len).sum();
                let (first, _) = scan.damaged[0];
                tracing::error!(segment = %path.display(), "the queue segment is damaged at byte {first}: {} damaged record(s), {bytes_lost} bytes, were skipped and what they held is lost; the {} intact records around them are kept", scan.damaged.len(), scan.records.len());
            }
            if scan.end < bytes.len() as u64 {
                // Zeros after the last record were written ahead of it (`ZERO_AHEAD`); anything
                // else is a torn write or damage. Either way it is cut off: appends go to a new
                // segment.
                let after = &bytes[scan.end as usize..];
                let lost = after.len();
                if after.iter().any(|&b| b != 0) {
                    if i + 1 == ids.len() {
                        tracing::warn!(segment = %path.display(), "the queue's last record does not read back (a write cut short by a crash or power loss, which was never acknowledged, or damage): its {lost} bytes are discarded");
                    } else {
                        tracing::error!(segment = %path.display(), "the queue segment is damaged at byte {}: the {lost} bytes after it cannot be read and their messages are lost", scan.end);
                    }
                }
                file.set_len(scan.end).map_err(io_error(&path))?;
            }
            state.log.segments.insert(
                id,
                Segment {
                    file: Arc::new(file),
                    path,
                    len: scan.end,
                    allocated: scan.end,
                    live: 0,
                    live_len: 0,
                },
            );
            for (offset, len, record) in scan.records {
                state.replay(id, offset, len, record);
            }
        }
        let queue = Queue {
            dir: dir.to_path_buf(),
            segment_bytes: (limits.max_bytes / 8).clamp(64 * 1024, 32 * 1024 * 1024),
            limits,
            state: Mutex::new(state),
            _lock: lock,
        };
        {
            let mut state = queue.lock();
            let next = ids.last().map_or(1, |id| id + 1);
            queue.start_segment(&mut state, next)?;
            queue.tidy(&mut state)?;
        }
        Ok(queue)
    }
}

impl State {
    /// Apply one record read back at open.
    fn replay(&mut self, segment: u32, offset: u64, len: u32, record: Record) {
        match record {
            Record::Header { next_seq } => self.index.next_seq = self.index.next_seq.max(next_seq),
            Record::Message {
                device,
                seq,
                enqueued_ms,
                message,
            } => {
                let size = size_of(&device, &message) as u32;
                self.index.next_seq = self.index.next_seq.max(seq + 1);
                let slot = Slot {
                    enqueued_ms,
                    segment,
                    offset,
                    len,
                    size,
                };
                self.insert(&device, seq, slot);
            }
            Record::RemovedThrough { device, seq } => {
                self.remove_through(&device, seq);
            }
            Record::Removed { device, seq } => {
                self.remove_one(&device, seq);
            }
        }
    }
}
