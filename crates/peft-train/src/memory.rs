//! The process's allocator setting for training and inference on host backends.

/// Keeps the memory the process frees for its next allocations instead of handing it back to
/// the operating system. Returns whether the setting took: it does on Linux with glibc; on
/// other platforms nothing changes and it returns `false`.
///
/// A training step frees and allocates the same large buffers (activations, the logits of the
/// head's slices, gradients) on every step. With glibc's defaults every buffer above its mmap
/// threshold is a fresh mapping: the kernel zeroes its pages again on first touch, on the
/// thread that allocates it, while the other cores wait. With this setting (`mallopt`: no mmap
/// for large blocks, no trimming, one arena) freed blocks are reused as they are.
/// `docs/benchmarks.md` has the measurement.
///
/// The cost: the resident set does not shrink after a peak until the process ends, and the
/// peak can grow by the heap's fragmentation (about 1 % on the guide's rows).
///
/// It sets the allocator of the whole process, so it is a choice for a program's `main`, before
/// any large allocation, not for a library: `peft` makes it first thing, and so do the
/// benchmarks.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn retain_freed_memory() -> bool {
    // SAFETY: `mallopt` only sets glibc's allocator parameters; glibc allows it at any time, from
    // any thread. `M_TRIM_THRESHOLD` -1 turns trimming off (mallopt(3)).
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, -1) == 1
            && libc::mallopt(libc::M_ARENA_MAX, 1) == 1
    }
}

/// See the Linux version: elsewhere nothing changes.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn retain_freed_memory() -> bool {
    false
}

/// Hands the memory the process has freed back to the operating system now (glibc's
/// `malloc_trim`), for example between training and a long generation, or before measuring the
/// resident set. Returns whether any was handed back; on other platforms nothing happens.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_freed_memory() -> bool {
    // SAFETY: `malloc_trim` only returns free heap pages to the kernel; glibc allows it at any
    // time, from any thread.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// See the Linux version: elsewhere nothing happens.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_takes_on_linux_with_glibc_and_allocations_still_work() {
        let took = retain_freed_memory();
        assert_eq!(took, cfg!(all(target_os = "linux", target_env = "gnu")));
        // A block above glibc's largest mmap threshold (32 MiB), freed and allocated again.
        for _ in 0..2 {
            let block = vec![1u8; 64 << 20];
            assert_eq!(block.iter().map(|&b| b as usize).sum::<usize>(), 64 << 20);
        }
        // Handing it back leaves the allocator working (whether anything was left to hand back
        // depends on the tests running beside this one).
        let released = release_freed_memory();
        assert!(took || !released);
        assert_eq!(vec![2u8; 64 << 20][(64 << 20) - 1], 2);
    }
}
