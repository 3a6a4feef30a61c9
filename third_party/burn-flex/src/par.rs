//! Element-wise loops split across rayon's pool for large buffers.
//!
//! Element-wise ops otherwise run on the calling thread only, while the pool (which runs the
//! matmuls) waits: on a 2-core machine every element-wise pass of a training step used one core.

/// Buffers with fewer elements stay on the calling thread (splitting costs more than it saves).
pub(crate) const PAR_MIN: usize = 1 << 15;

/// Elements per task.
const CHUNK: usize = 1 << 14;

/// `f` on every chunk of `data`, in parallel when `data` is large.
pub(crate) fn chunks_mut<E: Send>(data: &mut [E], f: impl Fn(&mut [E]) + Sync + Send) {
    #[cfg(feature = "rayon")]
    if data.len() >= PAR_MIN {
        use rayon::prelude::*;
        data.par_chunks_mut(CHUNK).for_each(f);
        return;
    }
    f(data)
}

/// `f` on matching chunks of `dst` and `src` (same length), in parallel when large.
pub(crate) fn zip_chunks_mut<E: Send, F: Sync>(
    dst: &mut [E],
    src: &[F],
    f: impl Fn(&mut [E], &[F]) + Sync + Send,
) {
    debug_assert_eq!(dst.len(), src.len());
    #[cfg(feature = "rayon")]
    if dst.len() >= PAR_MIN {
        use rayon::prelude::*;
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| f(d, s));
        return;
    }
    f(dst, src)
}

/// A vector of `len` elements whose values are not set, for an output that is written whole
/// before anything reads it.
///
/// `vec![0; len]` would be one more pass over the buffer: on memory the allocator reuses, a
/// `memset` on the calling thread while the pool waits.
///
/// # Safety
/// The caller writes every element before any is read.
pub(crate) unsafe fn uninit_vec<E: bytemuck::Pod>(len: usize) -> alloc::vec::Vec<E> {
    let mut out = alloc::vec::Vec::with_capacity(len);
    // SAFETY: the capacity is `len`; `E` is plain old data and the caller writes every element
    // before reading it (the same contract as `FlexTensor::copy_contiguous`'s buffer).
    unsafe { out.set_len(len) };
    out
}

/// `op` on matching elements of `a` and `b` (same length) into a new vector, in parallel when
/// large.
pub(crate) fn zip_map<E: bytemuck::Pod + Send + Sync, A: Copy + Sync, B: Copy + Sync>(
    a: &[A],
    b: &[B],
    op: impl Fn(A, B) -> E + Sync + Send,
) -> alloc::vec::Vec<E> {
    debug_assert_eq!(a.len(), b.len());
    // SAFETY: every chunk of `out` is paired with the chunks of `a` and `b` at the same offsets
    // (equal lengths, equal chunk sizes), and the loop writes each of its elements.
    let mut out = unsafe { uninit_vec(a.len()) };
    let run = |d: &mut [E], x: &[A], y: &[B]| {
        for ((o, &x), &y) in d.iter_mut().zip(x).zip(y) {
            *o = op(x, y);
        }
    };
    #[cfg(feature = "rayon")]
    if out.len() >= PAR_MIN {
        use rayon::prelude::*;
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK))
            .zip(b.par_chunks(CHUNK))
            .for_each(|((d, x), y)| run(d, x, y));
        return out;
    }
    run(&mut out, a, b);
    out
}

/// `src` mapped through `op` into a new vector, in parallel when large.
pub(crate) fn map<E: bytemuck::Pod + Send + Sync, F: Copy + Sync>(
    src: &[F],
    op: impl Fn(F) -> E + Sync + Send,
) -> alloc::vec::Vec<E> {
    // SAFETY: `zip_chunks_mut` hands every element of `out` to the loop below, which writes it.
    let mut out = unsafe { uninit_vec(src.len()) };
    zip_chunks_mut(&mut out, src, |d, s| {
        for (o, &x) in d.iter_mut().zip(s) {
            *o = op(x);
        }
    });
    out
}
