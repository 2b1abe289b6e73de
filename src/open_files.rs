//! The process's limit on open files.
//!
//! A job holds a file descriptor per connection, per spill file, and, while a large
//! transaction or a snapshot streams into the Parquet cold tier, per tenant directory
//! whose staged file has a row group written (`src/sinks/parquet/large_txn.rs`). Many
//! service managers start a process with a soft limit of 1,024 open files and a far
//! higher hard limit, which a job over a few thousand tenants would pass with "Too many
//! open files". The replicator raises its soft limit to the hard limit at start, as the
//! kernel lets any process do; the hard limit stays the operator's (systemd's
//! `LimitNOFILE`, `ulimit -Hn`).

/// The soft limit before and after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFilesLimit {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now (the hard limit, unless it was unlimited or already reached).
    pub now: u64,
}

/// Raises the soft limit on open files to the hard limit. Does nothing off Linux or when
/// the hard limit is unlimited (the soft one is then left as it is).
pub fn raise_open_files_limit() -> std::io::Result<OpenFilesLimit> {
    raise()
}

#[cfg(target_os = "linux")]
fn raise() -> std::io::Result<OpenFilesLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into the struct it is given, which lives here.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur >= limit.rlim_max || limit.rlim_max == libc::RLIM_INFINITY {
        return Ok(OpenFilesLimit {
            before,
            now: before,
        });
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads the struct it is given; raising the soft limit up to the
    // hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OpenFilesLimit {
        before,
        now: limit.rlim_cur,
    })
}

#[cfg(not(target_os = "linux"))]
fn raise() -> std::io::Result<OpenFilesLimit> {
    Ok(OpenFilesLimit { before: 0, now: 0 })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn limits() -> (u64, u64) {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in `raise`.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        (limit.rlim_cur, limit.rlim_max)
    }

    /// After the call the soft limit is the hard one, and a second call changes nothing.
    /// (Raising the soft limit of the test process is harmless to the other tests.)
    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let (_, hard) = limits();
        let first = raise_open_files_limit().unwrap();
        let (soft, hard_after) = limits();
        assert_eq!(hard_after, hard, "the hard limit is left alone");
        if hard != libc::RLIM_INFINITY {
            assert_eq!(soft, hard);
            assert_eq!(first.now, hard);
        }
        let second = raise_open_files_limit().unwrap();
        assert_eq!(second.before, second.now);
        assert_eq!(second.now, soft);
    }
}
