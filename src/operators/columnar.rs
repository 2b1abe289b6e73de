//! Columnar batching: the changes of consecutive transactions, gathered per (tenant,
//! table) into Arrow record batches for the compressed stream sinks.
//!
//! A sink task hands over a group of whole transactions (ascending commit LSN) — one
//! transaction alone while the job is caught up, bigger groups while it is behind, closed
//! at the sink's row limit — and [`columnar_batches`] turns it into one batch per
//! (scope, table shape), rows in commit order. Columns: the table's columns typed from
//! their PostgreSQL type as in the cold tier ([`StoredKind`]: integers, floats and
//! booleans typed, everything else PostgreSQL's text form; the type name kept in the
//! field metadata), then [`LSN_COLUMN`] (the transaction's commit LSN), [`OP_COLUMN`]
//! (`I` insert, `U` update, `D` delete, `T` truncate), [`COMMIT_TIME_COLUMN`] and
//! [`UNCHANGED_COLUMN`] (a JSON array of the columns an update left unchanged — TOASTed
//! values the source did not send — null when none).
//!
//! A value that does not parse as its column's type (never seen from PostgreSQL, whose
//! text form the parsers accept exactly) turns that column into text for the batch: the
//! value is kept, not dropped.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, TimeUnit};

use crate::change::{Cell, Lsn, Scope, TableInfo, TenantAction, TenantChange};
use crate::sinks::parquet::schema::{
    pg_to_arrow_micros, text_to_bool, text_to_f32, text_to_f64, text_to_i32, text_to_i64,
    StoredKind, PG_TYPE_KEY,
};
use crate::sinks::ApplyBatch;

/// The commit LSN of the row's transaction (UInt64).
pub const LSN_COLUMN: &str = "_helios_lsn";
/// What happened to the row: `I`, `U`, `D` or `T` (Utf8).
pub const OP_COLUMN: &str = "_helios_op";
/// The transaction's commit time (Timestamp µs, UTC; null when unknown).
pub const COMMIT_TIME_COLUMN: &str = "_helios_commit_time";
/// Columns an update left unchanged, as a JSON array of names (Utf8, null when none).
pub const UNCHANGED_COLUMN: &str = "_helios_unchanged";

/// Whose rows a batch holds: a tenant id, or [`ALL_TENANTS`] for changes the stream sent
/// without a tenant (a TRUNCATE, a DELETE whose key lacks the tenant column).
pub const ALL_TENANTS: &str = "_all";

/// One (scope, table) batch of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnarRows {
    /// The tenant id, or [`ALL_TENANTS`].
    pub tenant: String,
    /// The table's shape for these rows.
    pub table: Arc<TableInfo>,
    /// Commit LSN of the first row's transaction.
    pub first_lsn: Lsn,
    /// Commit LSN of the last row's transaction.
    pub last_lsn: Lsn,
    /// The rows.
    pub batch: RecordBatch,
}

/// The tenant a change's rows belong to in the stream.
pub fn tenant_of(scope: &Scope) -> &str {
    match scope {
        Scope::Tenant(t) => t,
        Scope::Worker { .. } => ALL_TENANTS,
    }
}

/// One row before it becomes columns.
struct PendingRow<'a> {
    lsn: Lsn,
    op: &'static str,
    cells: Option<&'a [Cell]>,
}

/// Rows of one (tenant, table shape), in order.
struct Segment<'a> {
    tenant: String,
    table: Arc<TableInfo>,
    rows: Vec<PendingRow<'a>>,
}

/// Gathers `batches` (ascending commit LSN) into one record batch per (tenant, table
/// shape). Changes that could not be routed to a tenant carry no values and are left out
/// (the caller counts them). `commit_time(lsn)` gives a transaction's commit time in
/// PostgreSQL microseconds when known.
pub fn columnar_batches(
    batches: &[ApplyBatch],
    commit_time: impl Fn(Lsn) -> Option<i64>,
) -> Result<Vec<ColumnarRows>, ArrowError> {
    let mut order: Vec<Segment> = Vec::new();
    let mut open: HashMap<(String, String), usize> = HashMap::new();
    for batch in batches {
        for change in &batch.changes {
            let rows = rows_of(batch.commit_lsn, change);
            if rows.is_empty() {
                continue;
            }
            let tenant = tenant_of(&change.scope).to_string();
            let key = (tenant.clone(), change.table.qualified_name());
            let index = match open.get(&key) {
                Some(&i)
                    if Arc::ptr_eq(&order[i].table, &change.table)
                        || order[i].table == change.table =>
                {
                    i
                }
                _ => {
                    order.push(Segment {
                        tenant,
                        table: change.table.clone(),
                        rows: Vec::new(),
                    });
                    open.insert(key, order.len() - 1);
                    order.len() - 1
                }
            };
            order[index].rows.extend(rows);
        }
    }
    order
        .into_iter()
        .map(|s| {
            let batch = build(&s.table, &s.rows, &commit_time)?;
            Ok(ColumnarRows {
                first_lsn: s.rows.first().map_or(0, |r| r.lsn),
                last_lsn: s.rows.last().map_or(0, |r| r.lsn),
                tenant: s.tenant,
                table: s.table,
                batch,
            })
        })
        .collect()
}

/// The rows one change contributes: an update that moved its key is a delete of the old
/// key followed by the new row.
fn rows_of(lsn: Lsn, change: &TenantChange) -> Vec<PendingRow<'_>> {
    match &change.action {
        TenantAction::Upsert { old, new, insert } => {
            let mut rows = Vec::with_capacity(2);
            if let Some(old) = old {
                let key = change.table.key_columns();
                if !key.is_empty() && key.iter().any(|&i| old.get(i) != new.get(i)) {
                    rows.push(PendingRow {
                        lsn,
                        op: "D",
                        cells: Some(old),
                    });
                }
            }
            rows.push(PendingRow {
                lsn,
                op: if *insert { "I" } else { "U" },
                cells: Some(new),
            });
            rows
        }
        TenantAction::Delete { old } => vec![PendingRow {
            lsn,
            op: "D",
            cells: Some(old),
        }],
        TenantAction::Truncate => vec![PendingRow {
            lsn,
            op: "T",
            cells: None,
        }],
        TenantAction::Unroutable { .. } => Vec::new(),
    }
}

/// The Arrow field of a user column stored as `kind`.
fn user_field(name: &str, pg_type: &str, data_type: DataType) -> Field {
    Field::new(name, data_type, true).with_metadata(HashMap::from([(
        PG_TYPE_KEY.to_string(),
        pg_type.to_string(),
    )]))
}

fn build(
    table: &TableInfo,
    rows: &[PendingRow],
    commit_time: &impl Fn(Lsn) -> Option<i64>,
) -> Result<RecordBatch, ArrowError> {
    let mut fields = Vec::with_capacity(table.columns.len() + 4);
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(table.columns.len() + 4);
    for (i, column) in table.columns.iter().enumerate() {
        fn cell<'a>(r: &PendingRow<'a>, i: usize) -> Option<&'a str> {
            r.cells.and_then(|c| c.get(i)).and_then(Cell::as_text)
        }
        let kind = StoredKind::of(&column.type_name);
        let (data_type, array) = match typed_column(kind, rows.iter().map(|r| cell(r, i))) {
            Some(array) => (kind.data_type(), array),
            None => {
                let mut b = StringBuilder::new();
                rows.iter().for_each(|r| b.append_option(cell(r, i)));
                (DataType::Utf8, Arc::new(b.finish()) as ArrayRef)
            }
        };
        fields.push(user_field(&column.name, &column.type_name, data_type));
        columns.push(array);
    }
    let mut lsn = UInt64Builder::with_capacity(rows.len());
    let mut op = StringBuilder::new();
    let mut time = TimestampMicrosecondBuilder::with_capacity(rows.len());
    let mut unchanged = StringBuilder::new();
    for r in rows {
        lsn.append_value(r.lsn);
        op.append_value(r.op);
        time.append_option(commit_time(r.lsn).and_then(pg_to_arrow_micros));
        let names: Vec<&str> = r
            .cells
            .map(|cells| {
                cells
                    .iter()
                    .zip(&table.columns)
                    .filter(|(c, _)| **c == Cell::Unchanged)
                    .map(|(_, col)| col.name.as_str())
                    .collect()
            })
            .unwrap_or_default();
        if names.is_empty() {
            unchanged.append_null();
        } else {
            unchanged.append_value(serde_json::to_string(&names).unwrap_or_default());
        }
    }
    fields.push(Field::new(LSN_COLUMN, DataType::UInt64, false));
    fields.push(Field::new(OP_COLUMN, DataType::Utf8, false));
    fields.push(Field::new(
        COMMIT_TIME_COLUMN,
        DataType::Timestamp(TimeUnit::Microsecond, timestamp_tz()),
        true,
    ));
    fields.push(Field::new(UNCHANGED_COLUMN, DataType::Utf8, true));
    columns.push(Arc::new(lsn.finish()));
    columns.push(Arc::new(op.finish()));
    columns.push(Arc::new(time.finish().with_timezone_opt(timestamp_tz())));
    columns.push(Arc::new(unchanged.finish()));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// UTC as an offset: readers without a time-zone database (arrow's own printer) accept it.
const COMMIT_TIME_TZ: &str = "+00:00";

fn timestamp_tz() -> Option<Arc<str>> {
    Some(Arc::from(COMMIT_TIME_TZ))
}

/// The column as its typed Arrow array, or `None` when some value does not parse.
fn typed_column<'a>(
    kind: StoredKind,
    values: impl Iterator<Item = Option<&'a str>>,
) -> Option<ArrayRef> {
    fn collect<'a, B, T>(
        values: impl Iterator<Item = Option<&'a str>>,
        mut builder: B,
        parse: impl Fn(&str) -> Result<T, String>,
        mut append: impl FnMut(&mut B, Option<T>),
        finish: impl FnOnce(B) -> ArrayRef,
    ) -> Option<ArrayRef> {
        for v in values {
            match v {
                Some(text) => append(&mut builder, Some(parse(text).ok()?)),
                None => append(&mut builder, None),
            }
        }
        Some(finish(builder))
    }
    match kind {
        StoredKind::Text => None,
        StoredKind::Int16 | StoredKind::Int32 => collect(
            values,
            Int32Builder::new(),
            |t| text_to_i32(t, kind == StoredKind::Int16),
            |b, v| b.append_option(v),
            |mut b| Arc::new(b.finish()),
        ),
        StoredKind::Int64 => collect(
            values,
            Int64Builder::new(),
            text_to_i64,
            |b, v| b.append_option(v),
            |mut b| Arc::new(b.finish()),
        ),
        StoredKind::Float32 => collect(
            values,
            Float32Builder::new(),
            text_to_f32,
            |b, v| b.append_option(v),
            |mut b| Arc::new(b.finish()),
        ),
        StoredKind::Float64 => collect(
            values,
            Float64Builder::new(),
            text_to_f64,
            |b, v| b.append_option(v),
            |mut b| Arc::new(b.finish()),
        ),
        StoredKind::Bool => collect(
            values,
            BooleanBuilder::new(),
            text_to_bool,
            |b, v| b.append_option(v),
            |mut b| Arc::new(b.finish()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::fixtures::table;
    use arrow_array::{Array, Int32Array, StringArray, UInt64Array};

    fn upsert(tenant: &str, t: &Arc<TableInfo>, cells: &[&str], insert: bool) -> TenantChange {
        TenantChange {
            scope: Scope::Tenant(tenant.into()),
            seq: 0,
            table: t.clone(),
            action: TenantAction::Upsert {
                old: None,
                new: cells
                    .iter()
                    .map(|c| Cell::Text(c.to_string().into()))
                    .collect(),
                insert,
            },
        }
    }

    fn batch(lsn: Lsn, changes: Vec<TenantChange>) -> ApplyBatch {
        ApplyBatch {
            commit_lsn: lsn,
            changes,
            history: Vec::new(),
        }
    }

    #[test]
    fn rows_are_grouped_per_tenant_and_table_in_commit_order() {
        let t = Arc::new(table(
            "public.t",
            &[("tenant_id", "integer"), ("id", "bigint"), ("note", "text")],
            &[0, 1],
        ));
        let batches = vec![
            batch(10, vec![upsert("1", &t, &["1", "5", "a"], true)]),
            batch(
                20,
                vec![
                    upsert("2", &t, &["2", "6", "b"], true),
                    upsert("1", &t, &["1", "5", "c"], false),
                ],
            ),
        ];
        let out = columnar_batches(&batches, |lsn| Some(lsn as i64)).expect("batches");
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].tenant.as_str(), out[0].first_lsn, out[0].last_lsn),
            ("1", 10, 20)
        );
        let b = &out[0].batch;
        assert_eq!(b.num_rows(), 2);
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<Int32Array>()
            .expect("int32");
        assert_eq!(ids.value(1), 1);
        let ops = b
            .column_by_name(OP_COLUMN)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
            .expect("op");
        assert_eq!((ops.value(0), ops.value(1)), ("I", "U"));
        let lsns = b
            .column_by_name(LSN_COLUMN)
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>().cloned())
            .expect("lsn");
        assert_eq!(lsns.values().to_vec(), vec![10, 20]);
    }

    #[test]
    fn a_key_change_is_a_delete_then_the_new_row_and_unchanged_values_are_named() {
        let t = Arc::new(table(
            "public.t",
            &[("tenant_id", "integer"), ("id", "bigint"), ("doc", "text")],
            &[0, 1],
        ));
        let change = TenantChange {
            scope: Scope::Tenant("1".into()),
            seq: 0,
            table: t.clone(),
            action: TenantAction::Upsert {
                old: Some(vec![
                    Cell::Text("1".into()),
                    Cell::Text("5".into()),
                    Cell::Null,
                ]),
                new: vec![
                    Cell::Text("1".into()),
                    Cell::Text("6".into()),
                    Cell::Unchanged,
                ],
                insert: false,
            },
        };
        let out = columnar_batches(&[batch(30, vec![change])], |_| None).expect("batches");
        let b = &out[0].batch;
        assert_eq!(b.num_rows(), 2);
        let ops = b.column_by_name(OP_COLUMN).expect("op");
        let ops = ops.as_any().downcast_ref::<StringArray>().expect("utf8");
        assert_eq!((ops.value(0), ops.value(1)), ("D", "U"));
        let unchanged = b.column_by_name(UNCHANGED_COLUMN).expect("unchanged");
        let unchanged = unchanged
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8");
        assert!(unchanged.is_null(0));
        assert_eq!(unchanged.value(1), r#"["doc"]"#);
        assert!(
            b.column(2).is_null(1),
            "an unchanged value is null in its column"
        );
    }

    #[test]
    fn a_value_that_does_not_parse_keeps_its_column_as_text() {
        let t = Arc::new(table("public.t", &[("n", "integer")], &[]));
        let out = columnar_batches(
            &[batch(
                1,
                vec![
                    upsert("1", &t, &["12"], true),
                    upsert("1", &t, &["x"], true),
                ],
            )],
            |_| None,
        )
        .expect("batches");
        let col = out[0].batch.column(0);
        let text = col.as_any().downcast_ref::<StringArray>().expect("text");
        assert_eq!((text.value(0), text.value(1)), ("12", "x"));
    }
}
