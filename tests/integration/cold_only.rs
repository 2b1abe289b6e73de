//! A job whose only sink is the Parquet cold tier (no PostgreSQL target): the snapshot
//! lands as open versions, the stream's versions follow, the job's progress lives in
//! `<root>/_jobs/`, and after a stop, writes while stopped and a restart, it resumes from
//! its slot (no second snapshot) with its version books restored from the published files:
//! every (system LSN, valid time) of the run, read back from the files, is what the
//! oracle over the change log says. A restored book that missed a version would leave it
//! open next to its successor, and a second snapshot would reopen every row: both show up
//! as rows the oracle does not have.

use std::collections::BTreeSet;
use std::path::Path;

use helios_repl::change::Lsn;
use helios_repl::control::cold_progress;
use helios_repl::sinks::parquet::{read_table, table_dir, Manifest};
use rand::{rngs::StdRng, SeedableRng};

use crate::cold_tier::{
    assert_only_gap_changes_versioned, cold_versions, VersionFacts, GAP_CHANGES, STREAMED_CHANGES,
};
use crate::harness::{wait_for, Env, Replicator};
use crate::history::{
    day, from_cold_tier, large_transaction, oracle, snapshot_log, workload, SETUP, WAIT,
};

fn job_toml(env: &Env, cold: &Path) -> String {
    format!(
        "name = \"cold_prices\"\n[source]\ndsn = \"{}\"\npublication = \"pub_cold\"\nslot = \"slot_cold\"\n\
         [tenants]\ninclude = [1, 2, 3, 4, 5]\n[[tables]]\nname = \"public.prices\"\nhistory = true\n\
         valid_time_column = \"effective_at\"\n[[sinks]]\nkind = \"parquet\"\nroot = \"{}\"\nbatch_max_rows = 5000\n",
        env.source_dsn(),
        cold.display()
    )
}

/// Waits until every replicated tenant's files hold a version written at or after `lsn`.
fn wait_covered(cold: &Path, lsn: Lsn) {
    wait_for("the cold tier to cover the last transaction", WAIT, || {
        (1..=5).all(|t| {
            read_table(cold, &t.to_string(), "public.prices")
                .map(|(_, rows)| {
                    rows.iter()
                        .any(|r| r.commit_lsn().is_some_and(|l| l >= lsn))
                })
                .unwrap_or(false)
        })
    });
}

#[test]
fn a_cold_tier_only_job_snapshots_streams_and_resumes_from_its_own_files() {
    let env = Env::start(SETUP);
    let cold = env.dir.path().join("cold");
    let job = env.dir.path().join("cold_prices.toml");
    std::fs::write(&job, job_toml(&env, &cold)).expect("job file");
    let mut replicator = Replicator::start_inline(&job);

    // The snapshot: five rows per replicated tenant, none of tenant 6.
    wait_for("the snapshot's versions", WAIT, || {
        (1..=5).all(|t| {
            read_table(&cold, &t.to_string(), "public.prices")
                .map(|(_, rows)| rows.len() == 5)
                .unwrap_or(false)
        })
    });
    assert!(read_table(&cold, "6", "public.prices").is_err());
    let progress = cold_progress::load_progress(&cold, "cold_prices").expect("progress file");
    let snapshot_lsn = progress.snapshot_lsn.expect("the snapshot is recorded");

    let (mut state, mut log) = snapshot_log();
    let mut points = vec![snapshot_lsn];
    let mut rng = StdRng::seed_from_u64(11);
    workload(&env, &mut rng, &mut state, &mut log, &mut points, 20);
    // One transaction far larger than a part: written to the cold tier piece by piece
    // as its parts arrive, published once.
    large_transaction(&env, &mut state, &mut log, &mut points, 60_000);
    let large = points.len() - 1;
    workload(&env, &mut rng, &mut state, &mut log, &mut points, 3);
    wait_covered(&cold, points[points.len() - 2]);
    assert!(replicator.stop().success(), "{}", replicator.output());
    let first_run = replicator.output();
    assert!(
        first_run.lines().any(
            |l| l.contains("large transaction applied from its spill file")
                && l.contains("parquet")
        ),
        "the cold tier wrote the large transaction in parts from its spill file:\n{first_run}"
    );
    for tenant in 1..=5 {
        let dir = table_dir(&cold, &tenant.to_string(), "public.prices");
        let manifest = Manifest::load(&dir).expect("manifest").expect("listed");
        assert!(
            manifest
                .files
                .iter()
                .any(|f| f.lsn_min == f.lsn_max && f.path.ends_with("-0000.parquet")),
            "tenant {tenant}: the large transaction was staged in pieces: {:?}",
            manifest.files
        );
    }
    let confirmed = cold_progress::load_progress(&cold, "cold_prices")
        .expect("progress file")
        .confirmed_lsn
        .expect("a confirmed position");
    assert!(
        confirmed > snapshot_lsn,
        "the stop recorded the confirmed position: {confirmed:X}\n{first_run}"
    );

    // Written while stopped, then replayed from the slot after the restart.
    workload(&env, &mut rng, &mut state, &mut log, &mut points, 10);
    let mut replicator = Replicator::start_inline(&job);
    workload(&env, &mut rng, &mut state, &mut log, &mut points, 10);
    wait_covered(&cold, points[points.len() - 2]);
    let second_run = replicator.output();
    assert!(
        second_run.contains("resuming from the slot's confirmed position"),
        "{second_run}"
    );
    assert!(
        !second_run.contains("initial snapshot loaded"),
        "{second_run}"
    );

    let valids: Vec<(i64, String)> = [-1, 0, 4, 17, 44, 89, 120]
        .iter()
        .map(|&d| day(d))
        .collect();
    let checked = (0..points.len()).step_by(3);
    for k in checked.chain([large - 1, large, points.len() - 1]) {
        for (v, text) in &valids {
            let (got, want) = (from_cold_tier(&cold, points[k], *v), oracle(&log, k, *v));
            if got != want {
                let only_got: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(10).collect();
                let only_want: Vec<_> = want.iter().filter(|r| !got.contains(r)).take(10).collect();
                panic!(
                    "cold tier at txn {k}, valid {text}: {} rows, the oracle {}; only in the cold tier: {only_got:?}; only in the oracle: {only_want:?}",
                    got.len(),
                    want.len()
                );
            }
        }
    }
    assert!(replicator.stop().success(), "{}", replicator.output());

    // The progress file records what the snapshot loaded: a spec with a tenant more (which
    // the cold tier cannot load into a running job) stops the job saying so.
    let wider = env.dir.path().join("cold_prices_wider.toml");
    std::fs::write(
        &wider,
        job_toml(&env, &cold).replace("[1, 2, 3, 4, 5]", "[1, 2, 3, 4, 5, 6]"),
    )
    .expect("job file");
    let mut replicator = Replicator::start_inline(&wider);
    wait_for("the wider job to stop", WAIT, || !replicator.is_running());
    let out = replicator.output();
    assert!(
        out.contains("public.prices (tenants 6)") && out.contains("--drop-slot"),
        "{out}"
    );

    // A progress file that is not one stops the job with a message naming it.
    let path = cold_progress::progress_path(&cold, "cold_prices");
    std::fs::write(&path, "{oops").expect("overwrite");
    let mut replicator = Replicator::start_inline(&job);
    wait_for("the job to fail on the progress file", WAIT, || {
        !replicator.is_running()
    });
    let out = replicator.output();
    assert!(out.contains("not a progress record"), "{out}");
    assert!(out.contains(&path.display().to_string()), "{out}");
    assert_eq!(std::fs::read_to_string(&path).expect("kept"), "{oops");
}

/// A cold-tier-only job whose slot was dropped while it was stopped takes a new snapshot
/// into its own files, which versions only what changed in the gap, as a job with a
/// history table does (`cold_tier::a_new_snapshot_versions_only_what_changed_while_the_slot_was_gone`):
/// the streamed values and the snapshot's compare equal where the row did not change.
#[test]
fn a_cold_tier_only_re_snapshot_versions_only_what_changed() {
    let env = Env::start(SETUP);
    let cold = env.dir.path().join("cold");
    let job = env.dir.path().join("cold_prices.toml");
    std::fs::write(&job, job_toml(&env, &cold)).expect("job file");
    let all_versions =
        || -> BTreeSet<VersionFacts> { (1..=5).flat_map(|t| cold_versions(&cold, t)).collect() };
    let mut replicator = Replicator::start_inline(&job);
    wait_for("the snapshot's versions", WAIT, || {
        (1..=5).all(|t| {
            read_table(&cold, &t.to_string(), "public.prices").is_ok_and(|(_, r)| r.len() == 5)
        })
    });
    env.on_source(STREAMED_CHANGES);
    wait_for("the streamed changes in the cold tier", WAIT, || {
        let versions = all_versions();
        versions.iter().any(|v| v.0 == (4, 4, None) && v.5)
            && versions.iter().any(|v| v.0 == (5, 5, Some(555)))
    });
    let before = all_versions();
    assert!(replicator.stop().success(), "{}", replicator.output());

    env.on_source("SELECT pg_drop_replication_slot('slot_cold')");
    env.on_source(GAP_CHANGES);
    let mut replicator = Replicator::start_inline(&job);
    wait_for("the new snapshot in the cold tier", WAIT, || {
        all_versions().iter().any(|v| v.0 == (4, 4, Some(400)))
    });
    assert!(
        replicator.output().contains("initial snapshot loaded"),
        "{}",
        replicator.output()
    );
    assert_only_gap_changes_versioned(&before, &all_versions());
    assert!(replicator.stop().success(), "{}", replicator.output());
}
