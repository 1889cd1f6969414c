//! The calling thread's scheduling: its nice value and I/O class. On Linux both are per
//! thread (despite `PRIO_PROCESS`), and a thread started afterwards inherits them, so
//! components use these to let work for clients go before background work: transfers,
//! scratch removal, the collector.

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
