//! Keeping the agent's resident memory near what it uses (glibc's allocator; elsewhere these
//! do nothing).

/// Limits glibc's malloc to two arenas. By default every thread that meets contention gets an
/// arena of its own (up to eight per CPU), and memory freed in one arena serves only it: the
/// agent's threads are few and mostly idle, so extra arenas only hold freed memory.
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's parameters; called before other threads.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 2);
    }
}

/// Gives heap memory that is free again back to the kernel: after a full resync, whose flow
/// tables for every bridge (megabytes with a thousand sandboxes) have just been dropped.
pub fn give_back_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free pages of the allocator's own heaps.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
