//! Handing memory the process freed back to the system.

/// Returns the free pages of every malloc arena to the system. A roll builds its files from
/// pages of rows and row groups of several MiB, in allocations under the mmap threshold; once it
/// is done they are free but stay in the process (glibc only trims the top of a heap), so a
/// loader that rolled once kept the roll's size for good. Called after each roll pass: it walks
/// the arenas (about a millisecond).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_freed() {
    // SAFETY: malloc_trim only returns free memory to the system; safe from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators manage their own release.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed() {}
