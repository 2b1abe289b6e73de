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
//!
//! While a large transaction streams through in parts ([`PromptPurge`]), freed memory goes
//! back at once instead: each part is a burst of its own, and the parts that a 3 s delay
//! keeps committed were a third of the peak (a 400 MB transaction of 40 KB rows peaked at
//! 206–261 MiB with the 3 s delay, 167–169 MiB with none, 200–214 MiB with 250 ms:
//! `cargo test --test integration a_transaction_of_wide_rows -- --nocapture`).

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
        set_purge_delay(PURGE_DELAY_MS);
        if let Ok(mut holds) = PROMPT_PURGE.lock() {
            holds.delay = Some(PURGE_DELAY_MS);
        }
    }
    purge_delay()
}

/// mimalloc's purge delay now in force (ms).
pub fn purge_delay() -> i64 {
    // SAFETY: mi_option_get only reads mimalloc's option table; the index is in range
    // (see MI_OPTION_PURGE_DELAY).
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) as i64 }
}

fn set_purge_delay(ms: i64) {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table; the index
    // is in range (see MI_OPTION_PURGE_DELAY).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms as _) };
}

/// Who holds freed memory to prompt purging, and the delay to go back to (`None`: the
/// delay is the operator's or mimalloc's, and is left alone).
struct PromptPurgeHolds {
    holders: usize,
    delay: Option<i64>,
}

impl PromptPurgeHolds {
    /// One more holder; the purge delay to set now, if any.
    fn hold(&mut self) -> Option<i64> {
        self.holders += 1;
        (self.holders == 1 && self.delay.is_some()).then_some(0)
    }

    /// One holder fewer; the purge delay to set now, if any.
    fn release(&mut self) -> Option<i64> {
        self.holders = self.holders.saturating_sub(1);
        if self.holders == 0 {
            self.delay
        } else {
            None
        }
    }
}

static PROMPT_PURGE: std::sync::Mutex<PromptPurgeHolds> = std::sync::Mutex::new(PromptPurgeHolds {
    holders: 0,
    delay: None,
});

/// While one is alive, memory mimalloc frees goes back to the kernel at once (purge delay
/// 0); the last one dropped puts [`PURGE_DELAY_MS`] back (see the module doc). Does
/// nothing unless [`delay_purging_freed_memory`] set the delay (the binary does, where the
/// operator did not choose one).
pub struct PromptPurge(());

impl PromptPurge {
    /// Holds memory purging prompt until dropped.
    pub fn hold() -> PromptPurge {
        if let Some(delay) = PROMPT_PURGE.lock().ok().and_then(|mut h| h.hold()) {
            set_purge_delay(delay);
        }
        PromptPurge(())
    }
}

impl Drop for PromptPurge {
    fn drop(&mut self) {
        if let Some(delay) = PROMPT_PURGE.lock().ok().and_then(|mut h| h.release()) {
            set_purge_delay(delay);
        }
    }
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

    #[test]
    fn purging_is_prompt_from_the_first_hold_to_the_last_release() {
        let mut holds = PromptPurgeHolds {
            holders: 0,
            delay: Some(PURGE_DELAY_MS),
        };
        assert_eq!(holds.hold(), Some(0));
        assert_eq!(holds.hold(), None, "already prompt");
        assert_eq!(holds.release(), None, "one holder left");
        assert_eq!(holds.release(), Some(PURGE_DELAY_MS));
        assert_eq!(
            holds.release(),
            Some(PURGE_DELAY_MS),
            "an extra release stays at 0 holders"
        );
        assert_eq!(holds.holders, 0);
        // A delay the operator chose (or mimalloc's own) is left alone.
        let mut theirs = PromptPurgeHolds {
            holders: 0,
            delay: None,
        };
        assert_eq!(theirs.hold(), None);
        assert_eq!(theirs.release(), None);
    }
}
