//! A leaving member's CPU priority. Once its partitions are handed over, closing its rolls is
//! housekeeping: the members still loading should get the cores it shares with them (on one
//! host, or in one cgroup), or the group's rate dips for as long as the closing runs.

/// Lowers every thread of this process to `nice` (`LOADER_CLOSING_NICE`; 0 is the default
/// priority, 19 the lowest): on Linux a nice value is a thread's own, so each is set (threads
/// started later inherit it from their creator). A thread already at a lower priority keeps it.
/// Returns how many threads were lowered.
#[cfg(target_os = "linux")]
pub fn lower_for_closing(nice: i32) -> std::io::Result<usize> {
    let mut lowered = 0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let Ok(tid) = entry?.file_name().to_string_lossy().parse::<libc::id_t>() else {
            continue;
        };
        if nice_of(tid).is_some_and(|now| now < nice)
            // SAFETY: a plain syscall on a thread of this process; no memory is passed.
            && unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } == 0
        {
            lowered += 1;
        }
    }
    Ok(lowered)
}

/// A thread's nice value; `None` if it has exited.
#[cfg(target_os = "linux")]
fn nice_of(tid: libc::id_t) -> Option<i32> {
    // getpriority returns -1 both for nice -1 and for an error: errno tells them apart.
    // SAFETY: errno is this thread's; getpriority is a plain syscall.
    unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
        (nice != -1 || *libc::__errno_location() == 0).then_some(nice)
    }
}

/// Elsewhere a nice value is the process's, and closing keeps the priority it has.
#[cfg(not(target_os = "linux"))]
pub fn lower_for_closing(_nice: i32) -> std::io::Result<usize> {
    Ok(0)
}
