//! [`CallArena`]: a global allocator for plugins whose allocations live for one call.
//!
//! A rule call allocates the incoming message (the host writes it through `cabi_realloc`), its own
//! working buffers and the result, and frees all of them in `cabi_post_translate` once the host
//! has read the result. General-purpose `malloc`/`free` bookkeeping is a large share of such a
//! short call. `CallArena` hands out memory from one fixed chunk by bumping a pointer and counts
//! the allocations still alive; when the count drops to zero — at the end of every call whose
//! allocations were all freed — the whole chunk is free again.
//!
//! Memory stays bounded whatever the plugin does: an allocation that does not fit the chunk's
//! remaining room (a large one, or anything after the chunk filled because something outlived its
//! call) goes to the system allocator instead, exactly as without the arena.
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: gatehost_sdk::CallArena = gatehost_sdk::CallArena::new();
//! ```
//!
//! Plugins are single-threaded (`wasm32-wasip2` has no threads), which is what makes the plain
//! `Cell`s below sound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Size of the arena chunk: enough for a message of the usual size, its result and the work in
/// between, small next to the host's per-instance memory limit.
const CHUNK: usize = 256 * 1024;

/// A bump allocator over one chunk, reset whenever nothing in it is alive (see the module docs).
pub struct CallArena {
    state: Cell<Option<Chunk>>,
}

#[derive(Clone, Copy)]
struct Chunk {
    start: usize,
    end: usize,
    /// Next free byte.
    top: usize,
    /// Start of the newest allocation, so freeing or growing it can reuse its room.
    last: usize,
    /// Allocations handed out from the chunk and not freed yet.
    live: usize,
}

// SAFETY: `wasm32-wasip2` components are single-threaded; the host never calls into one
// instance from two threads at once. Elsewhere the arena is not `Sync`, so it cannot be a
// global allocator there.
#[cfg(target_family = "wasm")]
unsafe impl Sync for CallArena {}

impl CallArena {
    pub const fn new() -> Self {
        CallArena {
            state: Cell::new(None),
        }
    }

    /// The chunk, taken from the system allocator on first use (`None` if that failed).
    fn chunk(&self) -> Option<Chunk> {
        if let Some(chunk) = self.state.get() {
            return Some(chunk);
        }
        // SAFETY: the layout has a non-zero size.
        let start =
            unsafe { System.alloc(Layout::from_size_align(CHUNK, 16).expect("valid layout")) };
        if start.is_null() {
            return None;
        }
        let start = start as usize;
        let chunk = Chunk {
            start,
            end: start + CHUNK,
            top: start,
            last: start,
            live: 0,
        };
        self.state.set(Some(chunk));
        Some(chunk)
    }

    fn owns(&self, ptr: *mut u8) -> bool {
        self.state
            .get()
            .is_some_and(|c| (c.start..c.end).contains(&(ptr as usize)))
    }
}

impl Default for CallArena {
    fn default() -> Self {
        Self::new()
    }
}

unsafe impl GlobalAlloc for CallArena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(mut c) = self.chunk() {
            let at = (c.top + layout.align() - 1) & !(layout.align() - 1);
            if at
                .checked_add(layout.size())
                .is_some_and(|end| end <= c.end)
            {
                c.last = at;
                c.top = at + layout.size();
                c.live += 1;
                self.state.set(Some(c));
                return at as *mut u8;
            }
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !self.owns(ptr) {
            // SAFETY: not from the chunk, so it came from the system allocator.
            return unsafe { System.dealloc(ptr, layout) };
        }
        let Some(mut c) = self.state.get() else {
            return;
        };
        c.live -= 1;
        if c.live == 0 {
            c.top = c.start;
            c.last = c.start;
        } else if ptr as usize == c.last {
            c.top = c.last;
        }
        self.state.set(Some(c));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.owns(ptr) {
            if let Some(mut c) = self.state.get() {
                // The newest allocation grows or shrinks in place while the chunk has room.
                if ptr as usize == c.last && c.last + new_size <= c.end {
                    c.top = c.last + new_size;
                    self.state.set(Some(c));
                    return ptr;
                }
            }
        } else {
            // SAFETY: not from the chunk, so it came from the system allocator.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: as `GlobalAlloc::realloc`'s default: new block, copy, free the old one.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}
