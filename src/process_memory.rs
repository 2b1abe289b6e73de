//! Process-wide memory settings of the replicator binary.
//!
//! Transparent huge pages: mimalloc asks the kernel for huge pages on its arenas
//! (`MADV_HUGEPAGE`), so every fresh 2 MiB region is zeroed whole on its first touch and
//! counts whole in RSS. For the replicator's allocation pattern (many small buffers per row,
//! freed on other threads) that cost 19 % of the CPU of a catch-up profile
//! (`HELIOS_BENCH_PERF`, clear_page_erms under mimalloc's page init) and a third more peak
//! RSS; with huge pages off, the same catch-up took 6.8 instead of 8.0 CPU-s per million
//! rows and 153 instead of 215 MiB (`cargo bench --bench e2e`, case (b)).

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`, which the
/// kernel checks on every fault, so it also covers arenas mimalloc already reserved),
/// unless the operator chose otherwise with `MIMALLOC_ALLOW_THP` (mimalloc's own switch).
/// Returns whether huge pages are now off. Does nothing off Linux.
pub fn disable_transparent_huge_pages() -> bool {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return false;
    }
    disable_thp()
}

#[cfg(target_os = "linux")]
fn disable_thp() -> bool {
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and only sets a flag on
    // this process's memory descriptor.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn disable_thp() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_are_off_after_the_call() {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
            return;
        }
        assert!(disable_transparent_huge_pages());
        // SAFETY: PR_GET_THP_DISABLE takes no pointer arguments.
        let state = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(state, 1, "the kernel reports THP disabled for this process");
    }
}
