//! The history mend against a real PostgreSQL and a cold tier written by the tier's own
//! writer: transactions of a few rows each, the versions before the missed LSN and beyond
//! each tenant's bound left alone, a refused transaction keeping the mark with the earlier
//! ones kept, and the mend taken again to the same result.

use std::collections::BTreeSet;
use std::path::Path;

use super::{Mended, TableMend};
use crate::change::{ColumnInfo, Identity, Lsn, TableInfo};
use crate::control::job_spec::TenantFilter;
use crate::embedded::pg_cluster::PgCluster;
use crate::sinks::parquet::writer::ColdTableWriter;
use crate::sinks::parquet::{ChangeOp, ColdColumn, ColdEvent, ColdRow};
use crate::sinks::pg_apply::{history, sink::connect, store};

const JOB: &str = "job";
const TABLE: &str = "app.t";
/// The first LSN the history table missed.
const FROM: Lsn = 1000;

fn table_info() -> TableInfo {
    let column = |name: &str, type_oid, type_name: &str, in_identity| ColumnInfo {
        name: name.into(),
        type_oid,
        type_modifier: -1,
        type_name: type_name.into(),
        in_identity,
        missing_value: None,
        attnum: None,
    };
    TableInfo {
        oid: 1,
        schema: "app".into(),
        name: "t".into(),
        columns: vec![
            column("id", 23, "integer", true),
            column("tenant_id", 25, "text", false),
            column("v", 25, "text", false),
        ],
        primary_key: vec![0],
        identity: Identity::Default,
        type_ddl: Vec::new(),
    }
}

/// One version of the test's history: key, value, opening and closing LSN.
#[derive(Clone)]
struct Version {
    id: i32,
    v: String,
    opened: Lsn,
    closed: Option<Lsn>,
}

/// Each tenant's versions of its keys (`10 × tenant + k`, the key being the table's):
/// keys 1–5 get `a` at LSN 500 (before the missed LSN), then `b` at 1100 + k; keys 1–3
/// then `c` at 1200 + k; key 5's `b` is closed at 5000 (a delete).
fn versions(tenant: &str) -> Vec<Version> {
    let base: i32 = tenant.parse::<i32>().expect("numeric test tenant") * 10;
    let mut out = Vec::new();
    for k in 1..=5 {
        let id = base + k;
        let k = k as Lsn;
        let b_closed = match k {
            1..=3 => Some(1200 + k),
            5 => Some(5000),
            _ => None,
        };
        out.push(Version {
            id,
            v: format!("a{id}"),
            opened: 500,
            closed: Some(1100 + k),
        });
        out.push(Version {
            id,
            v: format!("b{id}"),
            opened: 1100 + k,
            closed: b_closed,
        });
        if k <= 3 {
            out.push(Version {
                id,
                v: format!("c{id}"),
                opened: 1200 + k,
                closed: None,
            });
        }
    }
    out
}

/// What each tenant's history is mended up to.
fn upto(tenant: &str) -> Lsn {
    if tenant == "1" {
        3000
    } else {
        6000
    }
}

fn micros(lsn: Lsn) -> i64 {
    lsn as i64 * 1_000_000
}

fn cold_row(tenant: &str, version: &Version, event: ColdEvent) -> ColdRow {
    let values = [
        version.id.to_string(),
        tenant.to_string(),
        version.v.clone(),
    ];
    ColdRow {
        event,
        op: if version.opened == 500 {
            ChangeOp::Insert
        } else {
            ChangeOp::Update
        },
        values: values.into_iter().map(|s| Some(s.into())).collect(),
        valid_from: micros(version.opened),
        valid_to: None,
        system_from: micros(version.opened),
        system_from_lsn: version.opened,
        system_to: match event {
            ColdEvent::Open => None,
            ColdEvent::Close => version.closed.map(micros),
        },
        system_to_lsn: match event {
            ColdEvent::Open => None,
            ColdEvent::Close => version.closed,
        },
        tombstone: false,
    }
}

/// Writes every tenant's versions into the tier under `root`, one write per commit LSN.
fn write_tier(root: &Path, tenants: &[&str]) {
    let info = table_info();
    let columns: Vec<ColdColumn> = info
        .columns
        .iter()
        .map(|c| ColdColumn::new(c.name.clone(), c.type_name.clone()))
        .collect();
    for &tenant in tenants {
        let mut writer = ColdTableWriter::open(root, tenant, TABLE, &columns).expect("tier opens");
        let all = versions(tenant);
        let mut rows: Vec<ColdRow> = all
            .iter()
            .map(|v| cold_row(tenant, v, ColdEvent::Open))
            .chain(
                all.iter()
                    .filter(|v| v.closed.is_some())
                    .map(|v| cold_row(tenant, v, ColdEvent::Close)),
            )
            .collect();
        rows.sort_by_key(|r| r.commit_lsn());
        let lsns: BTreeSet<Lsn> = rows.iter().filter_map(ColdRow::commit_lsn).collect();
        for lsn in lsns {
            let group: Vec<ColdRow> = rows
                .iter()
                .filter(|r| r.commit_lsn() == Some(lsn))
                .cloned()
                .collect();
            writer.write(&group, lsn, lsn).expect("tier write");
        }
    }
}

/// The history as text, one `tenant|id|v|opened|closed` line per version, in order.
fn history_on(cluster: &PgCluster) -> String {
    cluster
        .psql(
            "dst",
            "SELECT coalesce(string_agg(concat_ws('|', tenant_id, id, v, \
             (system_from_lsn - '0/0'::pg_lsn)::bigint, \
             coalesce((system_to_lsn - '0/0'::pg_lsn)::bigint::text, '-')), E'\\n' \
             ORDER BY tenant_id, id, system_from_lsn), '') FROM app.t_history",
        )
        .expect("read history")
        .trim()
        .to_string()
}

/// What the history must hold once mended: the versions opened up to the tenant's bound,
/// closed where that came by it too.
fn expected(tenants: &[&str]) -> String {
    let mut lines = Vec::new();
    for &tenant in tenants {
        let mut all = versions(tenant);
        all.sort_by_key(|v| (v.id, v.opened));
        for v in all.iter().filter(|v| v.opened <= upto(tenant)) {
            let closed = v.closed.filter(|&c| c <= upto(tenant));
            let closed = closed.map_or("-".to_string(), |c| c.to_string());
            lines.push(format!("{tenant}|{}|{}|{}|{closed}", v.id, v.v, v.opened));
        }
    }
    lines.join("\n")
}

async fn missed_on(client: &tokio_postgres::Client) -> Vec<(String, Lsn)> {
    let tables = BTreeSet::from([TABLE.to_string()]);
    store::load_history_missed(client, JOB, &tables)
        .await
        .expect("read the mark")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_table_is_mended_a_few_rows_per_transaction_and_again_after_a_refusal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = PgCluster::scratch(&dir);
    cluster.create_database("dst").expect("create dst");
    let tenants = ["1", "2"];
    let root = dir.path().join("cold");
    write_tier(&root, &tenants);

    let info = table_info();
    let mut client = connect(&cluster.dsn("dst")).await.expect("connect");
    store::migrate(&client).await.expect("bookkeeping tables");
    client
        .batch_execute("CREATE SCHEMA app")
        .await
        .expect("schema");
    // The history as the sink wrote it before the table went into error: the `a`
    // versions, still open.
    let before: Vec<(String, Version)> = tenants
        .iter()
        .flat_map(|&t| versions(t).into_iter().map(move |v| (t.to_string(), v)))
        .filter(|(_, v)| v.opened < FROM)
        .map(|(t, mut v)| {
            v.closed = None;
            (t, v)
        })
        .collect();
    let rows: Vec<ColdRow> = before
        .iter()
        .map(|(t, v)| cold_row(t, v, ColdEvent::Open))
        .collect();
    let versions_before = super::TierVersions::of(&info, &rows);
    let (opens, _) = versions_before.rows();
    history::mend_versions(&mut client, JOB, &info, &opens, &[], false)
        .await
        .expect("the history before the error");
    store::mark_table_failed(&client, JOB, TABLE, "refused", FROM)
        .await
        .expect("table in error");
    store::mark_history_missed(&client, JOB, TABLE, FROM)
        .await
        .expect("history missed");

    // The history refuses the `c` versions: the open pass's third transaction of two rows
    // (tenant 1's b15 and c11) is refused, after the first two (b11–b14) committed.
    client
        .batch_execute("ALTER TABLE app.t_history ADD CONSTRAINT no_c CHECK (v NOT LIKE '%c%')")
        .await
        .expect("constraint");
    let include = TenantFilter::All;
    let mend = TableMend {
        job: JOB,
        root: &root,
        table: TABLE,
        info: &info,
        include: &include,
        from: FROM,
        txn_rows: 2,
    };
    let outcome = mend.run(&mut client, upto).await.expect("the mend runs");
    assert!(
        matches!(&outcome, Mended::Refused(reason) if reason.contains("no_c")),
        "the constraint refuses a transaction: {outcome:?}"
    );
    assert_eq!(
        missed_on(&client).await,
        vec![(TABLE.to_string(), FROM)],
        "the mark stays"
    );
    let partial = history_on(&cluster);
    for kept in ["1|11|b11|1101|-", "1|14|b14|1104|-"] {
        assert!(
            partial.lines().any(|l| l == kept),
            "the transactions before the refused one stay: {kept} missing from\n{partial}"
        );
    }
    assert!(
        !partial.contains("b15"),
        "the refused transaction left nothing:\n{partial}"
    );

    // Once the constraint goes, the mend is taken again from its start.
    client
        .batch_execute("ALTER TABLE app.t_history DROP CONSTRAINT no_c")
        .await
        .expect("drop constraint");
    let outcome = mend.run(&mut client, upto).await.expect("the mend runs");
    let want = expected(&tenants);
    assert_eq!(history_on(&cluster), want, "the mended history");
    let opened_in_range = want.lines().filter(|l| !l.contains("|500|")).count() as u64;
    assert_eq!(
        outcome,
        Mended::Done {
            inserted: opened_in_range - 4,
            closed: want.lines().filter(|l| !l.ends_with("|-")).count() as u64,
        },
        "b11–b14 were inserted by the refused mend already; every close is new"
    );
    assert!(missed_on(&client).await.is_empty(), "the mark is cleared");

    // A mend run again changes nothing.
    let again = mend.run(&mut client, upto).await.expect("the mend runs");
    assert_eq!(
        again,
        Mended::Done {
            inserted: 0,
            closed: 0
        }
    );
    assert_eq!(history_on(&cluster), want);
}
