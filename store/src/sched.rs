//! The calling thread's scheduling: its nice value and I/O class. On Linux both are per
//! thread (despite `PRIO_PROCESS`), and a thread started afterwards inherits them, so
//! components use these to let work for clients go before background work: transfers,
//! scratch removal, the collector, store-db's parts of a collection.

use std::io;

/// Sets this thread's nice value. Lowering it below the current one needs `CAP_SYS_NICE`.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: `setpriority` of the calling thread (`who` 0), no memory involved.
    if unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, nice) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// This thread's nice value.
pub fn thread_nice() -> io::Result<i32> {
    // `getpriority` may return -1 as a value: errno tells.
    nix::errno::Errno::clear();
    // SAFETY: as above.
    let n = unsafe { nix::libc::getpriority(nix::libc::PRIO_PROCESS, 0) };
    match nix::errno::Errno::last_raw() {
        0 => Ok(n),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Runs `f` at nice `nice` at least, then puts this thread's nice value back. Putting it back
/// needs `CAP_SYS_NICE` (store-db runs as root); without it the thread stays at `nice`, which
/// only makes it yield more.
pub fn at_nice<T>(nice: i32, f: impl FnOnce() -> T) -> T {
    let before = thread_nice().ok().filter(|&n| n < nice);
    if before.is_some() {
        let _ = set_thread_nice(nice);
    }
    let out = f();
    if let Some(n) = before {
        let _ = set_thread_nice(n);
    }
    out
}

/// Puts this thread in the idle I/O class: its disk I/O waits while others' is pending.
pub fn set_thread_io_idle() -> io::Result<()> {
    const IOPRIO_WHO_PROCESS: nix::libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: nix::libc::c_long = 3;
    // SAFETY: `ioprio_set` of the calling thread (`who` 0), no memory involved.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0 as nix::libc::c_long,
            IOPRIO_CLASS_IDLE << 13,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_nice_runs_at_the_value_and_puts_it_back() {
        // A thread of its own: the value is per thread.
        std::thread::spawn(|| {
            let before = thread_nice().unwrap();
            assert_eq!(at_nice(before + 5, || thread_nice().unwrap()), before + 5);
            let after = thread_nice().unwrap();
            if nix::unistd::geteuid().is_root() {
                assert_eq!(after, before);
            } else {
                assert_eq!(after, before + 5);
            }
            // Already lower in priority than asked: left alone.
            assert_eq!(at_nice(after - 1, || thread_nice().unwrap()), after);
        })
        .join()
        .unwrap();
    }
}
