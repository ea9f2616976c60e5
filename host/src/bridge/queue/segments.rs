//! The log on disk: numbered segment files, the active one appended to (with zeros written
//! ahead), the removal records waiting for the next write, and the active segment's tail kept in
//! memory for fresh reads. Segments are sealed when full and deleted, oldest first, once nothing
//! in them is queued; a mostly-dead old one has its live messages copied forward first.

use super::index::Slot;
use super::{io_error, record, Queue, QueueError, State};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One segment file: written up to `len` and zero-filled up to `allocated` (see
/// [`ZERO_AHEAD`]), holding `live` queued messages in `live_len` bytes.
pub(super) struct Segment {
    pub(super) file: Arc<File>,
    pub(super) path: PathBuf,
    pub(super) len: u64,
    pub(super) allocated: u64,
    pub(super) live: u64,
    pub(super) live_len: u64,
}

/// Zeros written ahead of the active segment's end, a chunk at a time. An append then lands in
/// bytes the file already has, so its sync writes the data and flushes, without also writing the
/// inode for a new file size (measured: 2.1 instead of 3.0 disk writes per `fdatasync`); the size
/// changes once per chunk. A zero frame length ends a segment's records when it is read back.
pub(super) const ZERO_AHEAD: u64 = 1024 * 1024;

/// How much of the active segment's end is kept in memory.
const TAIL_MAX: usize = 4 * 1024 * 1024;

/// The segments and what is about to be written to the active one.
pub(super) struct Log {
    pub(super) segments: BTreeMap<u32, Segment>,
    /// The segment appends go to (the newest).
    pub(super) active: u32,
    /// Removal records not yet written: they go out ahead of the next write.
    pub(super) pending: Vec<u8>,
    /// The active segment's last bytes (from `tail_start`), so the device workers read fresh
    /// messages from memory.
    pub(super) tail: Vec<u8>,
    pub(super) tail_start: u64,
}

impl Log {
    pub(super) fn new() -> Log {
        Log {
            segments: BTreeMap::new(),
            active: 0,
            pending: Vec::new(),
            tail: Vec::new(),
            tail_start: 0,
        }
    }

    /// A message record at `slot` is queued.
    pub(super) fn count(&mut self, slot: &Slot) {
        if let Some(s) = self.segments.get_mut(&slot.segment) {
            s.live += 1;
            s.live_len += u64::from(slot.len);
        }
    }

    /// The message record at `slot` is no longer queued.
    pub(super) fn release(&mut self, slot: &Slot) {
        if let Some(s) = self.segments.get_mut(&slot.segment) {
            s.live -= 1;
            s.live_len -= u64::from(slot.len);
        }
    }

    pub(super) fn active(&self) -> &Segment {
        &self.segments[&self.active]
    }

    /// Write the pending removals and then `records` at the end of the active segment; the
    /// file, for syncing outside the lock. `records`' offsets are relative to its start.
    pub(super) fn write(&mut self, records: &[u8]) -> std::io::Result<(Arc<File>, u64)> {
        let pending = std::mem::take(&mut self.pending);
        let segment = self.segments.get_mut(&self.active).expect("active segment");
        let start = segment.len;
        let end = start + (pending.len() + records.len()) as u64;
        let mut result = Ok(());
        if end > segment.allocated {
            let allocated = (end / ZERO_AHEAD + 1) * ZERO_AHEAD;
            let zeros = vec![0u8; (allocated - end) as usize];
            result = segment.file.write_all_at(&zeros, end);
            if result.is_ok() {
                segment.allocated = allocated;
            }
        }
        if result.is_ok() {
            result = segment.file.write_all_at(&pending, start);
        }
        if result.is_ok() {
            result = segment
                .file
                .write_all_at(records, start + pending.len() as u64);
        }
        match result {
            Ok(()) => {
                segment.len += (pending.len() + records.len()) as u64;
                if self.tail_start + self.tail.len() as u64 == start {
                    self.tail.extend_from_slice(&pending);
                    self.tail.extend_from_slice(records);
                    if self.tail.len() > TAIL_MAX {
                        let cut = self.tail.len() - TAIL_MAX / 2;
                        self.tail.drain(..cut);
                        self.tail_start += cut as u64;
                    }
                }
                Ok((segment.file.clone(), start + pending.len() as u64))
            }
            Err(e) => {
                // Nothing of it counts: cut off what reached the file, keep the removals for
                // the next write.
                let _ = segment.file.set_len(start);
                segment.allocated = start;
                self.pending = pending;
                Err(e)
            }
        }
    }
}

pub(super) fn segment_name(id: u32) -> String {
    format!("{id:08}.log")
}

/// The segment ids in `dir`, oldest first.
pub(super) fn segment_ids(dir: &Path) -> std::io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name
            .strip_suffix(".log")
            .filter(|n| n.len() == 8)
            .and_then(|n| n.parse().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Queue {
    /// Create segment `id` with its header and make it the active one.
    pub(super) fn start_segment(&self, state: &mut State, id: u32) -> Result<(), QueueError> {
        let path = self.dir.join(segment_name(id));
        let mut header = Vec::new();
        record::write_header(&mut header, state.index.next_seq);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error(&path))?;
        file.write_all_at(&header, 0)
            .and_then(|()| file.sync_data())
            .and_then(|()| sync_dir(&self.dir))
            .map_err(io_error(&path))?;
        state.log.segments.insert(
            id,
            Segment {
                file: Arc::new(file),
                path,
                len: header.len() as u64,
                allocated: header.len() as u64,
                live: 0,
                live_len: 0,
            },
        );
        state.log.active = id;
        state.log.tail.clear();
        state.log.tail_start = header.len() as u64;
        Ok(())
    }

    /// Seal the active segment once it is full: sync it, start the next, tidy the old ones.
    pub(super) fn rotate_if_full(&self, state: &mut State) -> Result<(), QueueError> {
        if state.log.active().len < self.segment_bytes {
            return Ok(());
        }
        let old = state.log.active();
        old.file.sync_data().map_err(io_error(&old.path))?;
        self.start_segment(state, state.log.active + 1)?;
        self.tidy(state)
    }

    /// Delete the oldest sealed segments once nothing in them is queued; an oldest one that is
    /// less than half live has its messages copied forward first. Only the oldest go, so no
    /// removal record is lost while a message it removes is still on disk.
    pub(super) fn tidy(&self, state: &mut State) -> Result<(), QueueError> {
        while let Some((&id, oldest)) = state.log.segments.first_key_value() {
            if id == state.log.active {
                break;
            }
            if oldest.live > 0 {
                if oldest.live_len * 2 >= oldest.len {
                    break;
                }
                self.copy_forward(state, id)?;
            }
            let gone = state.log.segments.remove(&id).expect("oldest segment");
            std::fs::remove_file(&gone.path).map_err(io_error(&gone.path))?;
        }
        Ok(())
    }

    /// Append copies of segment `id`'s live messages to the active segment, synced, and point
    /// the index at them.
    fn copy_forward(&self, state: &mut State, id: u32) -> Result<(), QueueError> {
        let source = &state.log.segments[&id];
        let (file, path) = (source.file.clone(), source.path.clone());
        let mut moving: Vec<(String, u64, Slot)> = Vec::new();
        for (device, queue) in &state.index.devices {
            for (&seq, slot) in &queue.slots {
                if slot.segment == id {
                    moving.push((device.clone(), seq, *slot));
                }
            }
        }
        let mut out = Vec::new();
        let mut at = Vec::with_capacity(moving.len());
        for (_, _, slot) in &moving {
            let from = out.len();
            at.push(from as u64);
            out.resize(from + slot.len as usize, 0);
            file.read_exact_at(&mut out[from..], slot.offset)
                .map_err(io_error(&path))?;
        }
        let (active_file, base) = state.log.write(&out).map_err(io_error(&path))?;
        active_file
            .sync_data()
            .map_err(io_error(&state.log.active().path))?;
        let active = state.log.active;
        for ((device, seq, slot), offset) in moving.into_iter().zip(at) {
            let moved = Slot {
                segment: active,
                offset: base + offset,
                ..slot
            };
            state.insert(&device, seq, moved);
        }
        Ok(())
    }
}
