//! How the process's allocator treats tensor buffers on the CPU backend.
//!
//! glibc serves every allocation above its mmap threshold (at most 32 MiB) with a
//! fresh `mmap` and returns it with `munmap` when freed. A CPU training step
//! allocates and frees the same large buffers (attention scores, activations,
//! gradients) every step, so each one is faulted in and zeroed by the kernel again:
//! on the tiny preset that was a third of the step's time, in the kernel.
//! Keeping freed blocks in the heap lets the next step reuse them.

/// Makes glibc keep large freed blocks for reuse instead of returning them to the
/// kernel. Call once, before the first tensor is made; a no-op elsewhere than on
/// glibc. The process's peak footprint is unchanged: freed blocks are reused, not
/// added to.
pub fn reuse_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before other
    // threads allocate, and a refused setting (return 0) leaves glibc's default.
    unsafe {
        // Serve large requests from the heap rather than from mmap...
        libc::mallopt(libc::M_MMAP_MAX, 0);
        // ...and do not hand the heap's free top back to the kernel after each step.
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
