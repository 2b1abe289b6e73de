//! One small target transaction as our PostgreSQL sink sends it at low rates (10 rows into
//! a table with the lag bench's `BEFORE INSERT` trigger, plus the checkpoint upsert):
//! shared by `round_trip` (its shapes side by side) and `e2e` (the round trip measured in
//! the same run as the lag, beside the subscription's lag).

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

pub const SCHEMA: &str = "
CREATE TABLE l (tenant_id int, id bigint, amount numeric(12,2), note text,
    created_at timestamptz, applied_at timestamptz, PRIMARY KEY (tenant_id, id));
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN NEW.applied_at := clock_timestamp(); RETURN NEW; END $$;
CREATE TRIGGER stamp BEFORE INSERT ON l FOR EACH ROW EXECUTE FUNCTION stamp();
CREATE TABLE ck (job text, scope text, commit_lsn pg_lsn, updated_at timestamptz,
    PRIMARY KEY (job, scope));";
pub const INSERT: &str = "INSERT INTO l (tenant_id, id, amount, note, created_at)
    SELECT a::int, b::bigint, c::numeric, d, e::timestamptz
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS u(a, b, c, d, e)";
pub const CHECKPOINT: &str = "INSERT INTO ck (job, scope, commit_lsn, updated_at)
    SELECT $1, s, l::pg_lsn, now() FROM unnest($2::text[], $3::text[]) AS u(s, l)
    ON CONFLICT (job, scope) DO UPDATE
    SET commit_lsn = greatest(ck.commit_lsn, EXCLUDED.commit_lsn), updated_at = now()";
pub const ROWS: i64 = 10;

/// One transaction's rows as text columns.
pub struct Rows {
    pub columns: [Vec<String>; 5],
    pub lsn: String,
}

impl Rows {
    pub fn new(first_id: i64) -> Rows {
        let ids: Vec<i64> = (first_id..first_id + ROWS).collect();
        let text = |f: &dyn Fn(i64) -> String| ids.iter().map(|&i| f(i)).collect::<Vec<_>>();
        Rows {
            columns: [
                text(&|i| (i % 50).to_string()),
                text(&|i| i.to_string()),
                text(&|i| format!("{i}.25")),
                text(&|i| format!("note {i} for a tenant row")),
                text(&|_| "2026-12-04 10:00:00+00".to_string()),
            ],
            lsn: format!("0/{first_id:X}"),
        }
    }
}

/// Our sink's shape: the requests written together, answers read afterwards: `BEGIN`, the
/// insert, the progress statement with its parameters if any (our checkpoint upsert or the
/// replication origin's commit hook), `COMMIT`.
pub async fn pipelined(
    client: &Client,
    insert: &Statement,
    progress: Option<(&Statement, &[&(dyn ToSql + Sync)])>,
    rows: &Rows,
) -> anyhow::Result<()> {
    let [a, b, c, d, e] = &rows.columns;
    let insert_params: [&(dyn ToSql + Sync); 5] = [a, b, c, d, e];
    // `join!` polls in order, so the requests go out in this order.
    let (begin, inserted, progressed, commit) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.execute(insert, &insert_params),
        async {
            match progress {
                Some((statement, params)) => client.execute(statement, params).await.map(drop),
                None => Ok(()),
            }
        },
        client.batch_execute("COMMIT"),
    );
    begin?;
    inserted?;
    progressed?;
    commit?;
    Ok(())
}
