//! mimalloc as the global allocator, taking mimalloc's plain path
//! (`mi_malloc`) for every layout that it aligns anyway.
//!
//! The `mimalloc` crate's `MiMalloc` passes every allocation to
//! `mi_malloc_aligned`, with the layout's alignment. mimalloc 3 serves that
//! from the size's own free list only while that list has a block; when it
//! is empty, and the size class is not a power of two, it does not refill
//! it (as `mi_malloc` does) but over-allocates from a larger class
//! (`mi_theap_malloc_zero_aligned_at_overalloc`). In privacy-router's pure
//! path, the 280-byte header list of each tier record took that slower
//! path on most calls, in a block larger than asked for. Rust's
//! allocations are nearly all aligned to 16 or less, so nearly every call
//! can take the plain path.
//!
//! A block of `mi_malloc(size)` is aligned to `align` when `align` is at
//! most 16 and divides `size`: mimalloc's size classes are multiples of 8,
//! and of 16 above 16, and each page's first block is 16-aligned. This
//! allocator checks the address anyway and falls back to
//! `mi_malloc_aligned` (after freeing the block) if it is not, so it never
//! rests on that.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// The largest alignment that mimalloc's plain path can give
/// (`MI_MAX_ALIGN_SIZE`).
const PLAIN_ALIGN: usize = 16;

/// mimalloc, through its plain path where that gives the alignment.
#[derive(Debug, Clone, Copy, Default)]
pub struct MiMalloc;

/// Whether `mi_malloc(size)` gives a block aligned to `align`, as far as
/// mimalloc's size classes go (the address is checked as well). `align` is
/// a power of two, so a mask tells whether it divides `size`, without a
/// division.
#[inline]
fn plain(size: usize, align: usize) -> bool {
    align <= PLAIN_ALIGN && size >= align && size & (align - 1) == 0
}

#[inline]
fn aligned(p: *mut c_void, align: usize) -> bool {
    (p as usize) & (align - 1) == 0
}

/// A block for `layout` from `plain_fn` where that gives one aligned to
/// it, else from `aligned_fn`.
///
/// # Safety
/// `plain_fn` and `aligned_fn` are mimalloc's allocation functions (a
/// size; a size and a power-of-two alignment).
#[inline(always)]
unsafe fn allocate(
    layout: Layout,
    plain_fn: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned_fn: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    let (size, align) = (layout.size(), layout.align());
    if plain(size, align) {
        // SAFETY: a mimalloc allocation function, which takes any size.
        let p = unsafe { plain_fn(size) };
        if aligned(p, align) {
            return p.cast();
        }
        // SAFETY: `p` came from mimalloc just now.
        unsafe { mi_free(p) };
    }
    // SAFETY: `align` is a power of two, as `Layout` guarantees.
    unsafe { aligned_fn(size, align) }.cast()
}

// SAFETY: each method returns a block from mimalloc that is at least
// `layout.size()` bytes and aligned to `layout.align()` (or null), and
// frees only blocks that mimalloc gave: every block, from either path, is
// mimalloc's, and `mi_free` frees both kinds.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: both take any size, and any power-of-two alignment.
        unsafe { allocate(layout, mi_malloc, mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`; both return zeroed blocks.
        unsafe { allocate(layout, mi_zalloc, mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a block of this allocator, which is
        // mimalloc's.
        unsafe { mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        if plain(new_size, align) {
            // SAFETY: the caller passes a block of this allocator (mimalloc's)
            // and a non-zero `new_size`.
            let p = unsafe { mi_realloc(ptr.cast(), new_size) };
            if p.is_null() || aligned(p, align) {
                return p.cast();
            }
            // The block moved to an address that is not aligned: move it
            // again, to one that is. `mi_realloc_aligned` copies what the
            // block holds.
            // SAFETY: `p` is mimalloc's, of at least `new_size` bytes.
            return unsafe { mi_realloc_aligned(p, new_size, align) }.cast();
        }
        // SAFETY: as above; `align` is a power of two.
        unsafe { mi_realloc_aligned(ptr.cast(), new_size, align) }.cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static GLOBAL: MiMalloc = MiMalloc;

    #[test]
    fn blocks_are_aligned_and_hold_what_was_written() {
        for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1usize, 7, 8, 16, 24, 40, 48, 56, 280, 1000, 5000, 70_000] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // SAFETY: `layout` has a non-zero size; the block is freed
                // with the layout it was made with.
                unsafe {
                    let p = GLOBAL.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xa5, size);
                    let q = GLOBAL.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                    assert!((0..size).all(|i| *q.add(i) == 0xa5));
                    GLOBAL.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = GLOBAL.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    GLOBAL.dealloc(z, layout);
                }
            }
        }
    }

    #[test]
    fn collections_work_on_it() {
        let v: Vec<Vec<u64>> = (0..1000).map(|i| vec![i; (i % 40) as usize]).collect();
        assert_eq!(
            v.iter().map(Vec::len).sum::<usize>(),
            (0..1000).map(|i| i % 40).sum()
        );
        let s: String = (0..500)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        assert_eq!(s.len(), 500);
    }
}
