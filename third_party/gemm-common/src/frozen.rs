//! peft-rs: operands packed once and kept, for values that do not change between products.
//!
//! `gemm` packs its inner left-hand side (a Linear layer's weight in `x·W` and in `dY·Wᵀ`)
//! again in every call. A caller that knows a buffer will not change, a frozen weight, calls
//! [`freeze`] with its bytes; while the returned [`Frozen`] lives, a product whose inner
//! left-hand side lies in that buffer packs it whole on its first call, every depth block and
//! every panel, keeps the pack, and later products with the same layout and blocking read it
//! instead of packing. Dropping the [`Frozen`] frees its packs. The caller must not write the
//! buffer, or free it, while it is frozen.
//!
//! Packing only moves values and the blocking is the same, so a product is bit-identical with or
//! without a kept pack.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::any::TypeId;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

/// How a left-hand side was packed: the operand (address, type, size, strides) and the
/// kernel's panel height and depth block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct PackKey {
    pub ptr: usize,
    pub type_id: TypeId,
    pub m: usize,
    pub k: usize,
    pub rs: isize,
    pub cs: isize,
    pub mr: usize,
    pub kc: usize,
}

/// A whole packed left-hand side: for depth block `d` and panel `p`, `kc · MR` values at
/// `(d · panels + p) · kc · MR`.
pub(crate) struct Pack {
    /// Owns the memory `ptr` points into.
    _buf: dyn_stack::MemBuffer,
    ptr: *mut u8,
    len_bytes: usize,
    /// Panels of `MR` rows per depth block.
    pub panels: usize,
}

// SAFETY: the buffer is written once, before the pack is shared, and only read afterwards.
unsafe impl Send for Pack {}
unsafe impl Sync for Pack {}

impl Pack {
    /// The first element, for a `T` of the key's type.
    pub fn as_ptr<T>(&self) -> *mut T {
        self.ptr as *mut T
    }
}

struct Region {
    id: usize,
    start: usize,
    end: usize,
    packs: Mutex<Vec<(PackKey, Arc<Pack>)>>,
}

static REGIONS: RwLock<Vec<Region>> = RwLock::new(Vec::new());
/// How many regions are frozen, read before taking the lock: zero in most programs.
static FROZEN: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// A frozen buffer; its packs are freed when it is dropped.
#[derive(Debug)]
pub struct Frozen {
    id: usize,
}

/// Freezes `len` bytes from `ptr`: products whose inner left-hand side lies inside them keep
/// their packs until the returned [`Frozen`] is dropped.
///
/// # Safety
/// The bytes must stay allocated and unchanged until the [`Frozen`] is dropped.
pub unsafe fn freeze(ptr: *const u8, len: usize) -> Frozen {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut regions = REGIONS.write().unwrap_or_else(|e| e.into_inner());
    regions.push(Region {
        id,
        start: ptr as usize,
        end: ptr as usize + len,
        packs: Mutex::new(Vec::new()),
    });
    FROZEN.fetch_add(1, Ordering::Release);
    Frozen { id }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let mut regions = REGIONS.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = regions.iter().position(|r| r.id == self.id) {
            regions.swap_remove(i);
            FROZEN.fetch_sub(1, Ordering::Release);
        }
    }
}

impl Frozen {
    /// The bytes this region's packs keep now.
    pub fn packed_bytes(&self) -> usize {
        let regions = REGIONS.read().unwrap_or_else(|e| e.into_inner());
        regions.iter().filter(|r| r.id == self.id).map(Region::packed_bytes).sum()
    }
}

/// The bytes kept by the packs of every frozen region.
pub fn packed_bytes() -> usize {
    let regions = REGIONS.read().unwrap_or_else(|e| e.into_inner());
    regions.iter().map(Region::packed_bytes).sum()
}

impl Region {
    fn packed_bytes(&self) -> usize {
        let packs = self.packs.lock().unwrap_or_else(|e| e.into_inner());
        packs.iter().map(|(_, p)| p.len_bytes()).sum()
    }
}

impl Pack {
    fn len_bytes(&self) -> usize {
        self.len_bytes
    }
}

/// The kept pack of the `m × k` operand at `key.ptr` with strides `rs`, `cs`, made by `pack` on
/// the first call (`pack(dst, panels)` writes every depth block and panel, in the layout of
/// [`Pack`], into `dst`); `None` if the operand does not lie inside one frozen region or has a
/// negative stride.
pub(crate) fn lookup_or_pack<T: 'static>(
    key: PackKey,
    pack: impl FnOnce(*mut T, usize),
) -> Option<Arc<Pack>> {
    if FROZEN.load(Ordering::Acquire) == 0 || key.rs < 0 || key.cs < 0 || key.m == 0 || key.k == 0
    {
        return None;
    }
    let size = core::mem::size_of::<T>();
    let last = key.ptr
        + ((key.m - 1) * key.rs as usize + (key.k - 1) * key.cs as usize) * size
        + size;
    let regions = REGIONS.read().unwrap_or_else(|e| e.into_inner());
    let region = regions
        .iter()
        .find(|r| r.start <= key.ptr && last <= r.end)?;
    let mut packs = region.packs.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = packs.iter().find(|(k, _)| *k == key) {
        return Some(p.clone());
    }
    let panels = key.m.div_ceil(key.mr);
    let blocks = key.k.div_ceil(key.kc);
    let len = blocks * panels * key.kc * key.mr;
    let mut buf = dyn_stack::MemBuffer::new(dyn_stack::StackReq::new_aligned::<T>(
        len,
        crate::gemm::CACHELINE_ALIGN,
    ));
    let ptr = {
        let stack = dyn_stack::DynStack::new(&mut buf);
        let (slice, _) = stack.make_aligned_uninit::<T>(len, crate::gemm::CACHELINE_ALIGN);
        slice.as_mut_ptr() as *mut T
    };
    pack(ptr, panels);
    let p = Arc::new(Pack {
        _buf: buf,
        ptr: ptr as *mut u8,
        len_bytes: len * size,
        panels,
    });
    packs.push((key, p.clone()));
    Some(p)
}
