//! Process-wide memory settings of the replicator binary.
//!
//! Transparent huge pages: mimalloc asks the kernel for huge pages on its arenas
//! (`MADV_HUGEPAGE`), so every fresh 2 MiB region is zeroed whole on its first touch and
//! counts whole in RSS. For the replicator's allocation pattern (many small buffers per row,
//! freed on other threads) that cost 19 % of the CPU of a catch-up profile
//! (`HELIOS_BENCH_PERF`, clear_page_erms under mimalloc's page init) and a third more peak
//! RSS; with huge pages off, the same catch-up took 6.8 instead of 8.0 CPU-s per million
//! rows and 153 instead of 215 MiB (`cargo bench --bench e2e`, case (b)).
//!
//! Purge delay: mimalloc hands freed pages back to the kernel (`MADV_DONTNEED`) once they
//! stayed free for its purge delay, and every reuse after that faults and zeroes them again.
//! At its default (1 s) the kernel's page zeroing was 9 % of our CPU samples in a catch-up
//! profile (case (b)) and 13 % in the cold-tier catch-up (case (d)); with 3 s, 0.06 % and
//! 0.10 %. A longer delay holds more freed memory at a time: 10 s raised the peak of the
//! bench's 10-million-row transaction from 225 to 250 MiB, 3 s to 235 MiB. Memory freed
//! after a burst still goes back, 3 s later.

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

/// How long (ms) memory mimalloc freed stays committed before it goes back to the kernel.
pub const PURGE_DELAY_MS: i64 = 3_000;

/// mimalloc's `mi_option_purge_delay` (called `mi_option_reset_delay` before 2.1): its
/// place in `mi_option_t`, 15 in both the v2 and v3 headers. `libmimalloc-sys` names the
/// options around it but not this one.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets mimalloc's purge delay to [`PURGE_DELAY_MS`], unless the operator chose one with
/// `MIMALLOC_PURGE_DELAY` (mimalloc's own switch). Returns the delay now in force (ms).
pub fn delay_purging_freed_memory() -> i64 {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores an integer in mimalloc's option table; the
        // index is in range (see MI_OPTION_PURGE_DELAY).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS as _) };
    }
    // SAFETY: as above, a read of the same table.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) as i64 }
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

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // Before the call the slot holds mimalloc's documented default for the purge
        // delay (1000 ms in v3), which tells the index is the right option.
        // SAFETY: a read of mimalloc's option table.
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) } as i64;
        assert!(
            before == 1000 || before == PURGE_DELAY_MS,
            "option {MI_OPTION_PURGE_DELAY} read {before}, not the purge delay's default"
        );
        assert_eq!(delay_purging_freed_memory(), PURGE_DELAY_MS);
    }
}
