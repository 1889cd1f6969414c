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

/// Background work that others may come to wait for: [`Lowered::run`] runs it at a higher
/// nice value, and a thread about to wait for it calls [`Lowered::boost`], which puts the
/// running thread back at its own value until that run ends. Without it, a request waiting
/// for a collection's part (which holds the writer) waited for a thread at nice 10 sharing
/// the CPU with busy nice-0 threads: priority inversion.
///
/// A boost that comes late (the run ended meanwhile, and maybe the next began) sets a thread
/// of this process to the value it had before a run: at worst one more part runs boosted.
#[derive(Debug, Default)]
pub struct Lowered {
    /// The running thread's id in the high half and its nice value before the run (offset by
    /// 20 to be positive) in the low half; 0 when nothing runs lowered.
    running: std::sync::atomic::AtomicU64,
}

impl Lowered {
    pub const fn new() -> Lowered {
        Lowered { running: std::sync::atomic::AtomicU64::new(0) }
    }

    /// Runs `f` at nice `nice` at least (a thread already at a higher value is left alone),
    /// boostable meanwhile, then puts this thread's nice value back. Putting it back needs
    /// `CAP_SYS_NICE` (store-db runs as root); without it the thread stays at `nice`, which
    /// only makes it yield more.
    pub fn run<T>(&self, nice: i32, f: impl FnOnce() -> T) -> T {
        use std::sync::atomic::Ordering;
        let Some(before) = thread_nice().ok().filter(|&n| n < nice) else { return f() };
        let tid = nix::unistd::gettid().as_raw() as u64;
        let _ = set_thread_nice(nice);
        self.running.store(tid << 32 | (before + 20) as u64, Ordering::SeqCst);
        let out = f();
        self.running.store(0, Ordering::SeqCst);
        let _ = set_thread_nice(before);
        out
    }

    /// Puts the thread running lowered, if any, back at its nice value before the run.
    pub fn boost(&self) {
        let running = self.running.load(std::sync::atomic::Ordering::SeqCst);
        if running == 0 {
            return;
        }
        let (tid, nice) = ((running >> 32) as nix::libc::id_t, (running & 0xffff_ffff) as i32 - 20);
        // SAFETY: `setpriority` of one thread of this process, no memory involved.
        unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid, nice) };
    }

    /// Whether something runs lowered now.
    pub fn is_running(&self) -> bool {
        self.running.load(std::sync::atomic::Ordering::SeqCst) != 0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boost_puts_a_lowered_run_back_at_its_value_until_it_ends() {
        // Raising a thread's priority again needs CAP_SYS_NICE: without it (not root) the
        // boost and the run's own restoring fail, and the thread stays lowered.
        let root = nix::unistd::geteuid().is_root();
        static L: Lowered = Lowered::new();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (boosted_tx, boosted_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let before = thread_nice().unwrap();
            let inside = L.run(before + 10, || {
                let lowered = thread_nice().unwrap();
                started_tx.send(()).unwrap();
                boosted_rx.recv().unwrap();
                (lowered, thread_nice().unwrap())
            });
            (before, inside, thread_nice().unwrap())
        });
        started_rx.recv().unwrap();
        assert!(L.is_running());
        L.boost();
        boosted_tx.send(()).unwrap();
        let (before, (lowered, boosted), after) = t.join().unwrap();
        assert_eq!(lowered, before + 10);
        let expected = if root { before } else { before + 10 };
        assert_eq!(boosted, expected, "the boost reached the running thread");
        assert_eq!(after, expected);
        assert!(!L.is_running());
        // Nothing runs: a boost does nothing.
        L.boost();
    }

    #[test]
    fn a_lowered_run_runs_at_the_value_and_puts_it_back() {
        // A thread of its own: the value is per thread.
        std::thread::spawn(|| {
            let lowered = Lowered::new();
            let at_nice = |nice, f: fn() -> i32| lowered.run(nice, f);
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
