//! Scheduling priority of background threads.
//!
//! The hot-data predictor closes a window every `qos.window_secs`: scoring, training and
//! forecasting take tens of milliseconds of CPU at a time. On a machine the replicator
//! shares with the source and the target, that burst at normal priority held back the
//! replication path (the reader, the timely worker, the sink tasks) and showed as a lag
//! spike every window in the e2e lag timeline. Background threads therefore run niced, so
//! the scheduler gives them what the data path leaves.

/// How much lower (in `nice` steps) background threads run.
pub const BACKGROUND_NICENESS: i32 = 10;

/// Lowers the calling thread's priority by [`BACKGROUND_NICENESS`]. Returns whether it
/// did. On Linux `setpriority(PRIO_PROCESS, tid)` applies to one thread only; elsewhere
/// this does nothing.
pub fn lower_current_thread() -> bool {
    lower(BACKGROUND_NICENESS)
}

#[cfg(target_os = "linux")]
fn lower(by: i32) -> bool {
    // SAFETY: gettid takes no arguments; getpriority/setpriority take plain integers and
    // act on the calling thread (its tid).
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        // getpriority can return -1 legitimately: clear errno to tell it from a failure.
        *libc::__errno_location() = 0;
        let current = libc::getpriority(libc::PRIO_PROCESS, tid);
        if current == -1 && *libc::__errno_location() != 0 {
            return false;
        }
        libc::setpriority(libc::PRIO_PROCESS, tid, (current + by).min(19)) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn lower(_by: i32) -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn only_the_calling_thread_is_lowered() {
        // SAFETY: plain integer arguments, as above.
        let nice_of =
            |tid: libc::pid_t| unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
        // SAFETY: gettid takes no arguments.
        let main_tid = unsafe { libc::gettid() };
        let before = nice_of(main_tid);
        let (lowered, own, main_after) = std::thread::spawn(move || {
            // SAFETY: gettid takes no arguments.
            let own_tid = unsafe { libc::gettid() };
            let lowered = super::lower_current_thread();
            (lowered, nice_of(own_tid), nice_of(main_tid))
        })
        .join()
        .expect("thread ran");
        assert!(lowered);
        assert_eq!(own, (before + super::BACKGROUND_NICENESS).min(19));
        assert_eq!(main_after, before, "other threads keep their priority");
    }
}
