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

/// `src` mapped through `op` into a new vector, in parallel when large.
pub(crate) fn map<E: Copy + Send + Sync + Default, F: Copy + Sync>(
    src: &[F],
    op: impl Fn(F) -> E + Sync + Send,
) -> alloc::vec::Vec<E> {
    let mut out = alloc::vec![E::default(); src.len()];
    zip_chunks_mut(&mut out, src, |d, s| {
        for (o, &x) in d.iter_mut().zip(s) {
            *o = op(x);
        }
    });
    out
}
