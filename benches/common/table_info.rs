//! A replicated table as the source would describe it (`format_type` names), for benches
//! that hand rows to the sink without a source.

use helios_repl::change::{ColumnInfo, Identity, TableInfo};

/// `schema.name` with `columns` (name, type), the first `key` of them its primary key.
pub fn keyed_table(schema: &str, name: &str, columns: &[(&str, &str)], key: usize) -> TableInfo {
    TableInfo {
        oid: 1,
        schema: schema.into(),
        name: name.into(),
        columns: columns
            .iter()
            .enumerate()
            .map(|(i, (column, ty))| ColumnInfo {
                name: (*column).into(),
                type_oid: 0,
                type_modifier: -1,
                type_name: (*ty).into(),
                in_identity: i < key,
                missing_value: None,
                attnum: None,
            })
            .collect(),
        primary_key: (0..key).collect(),
        identity: Identity::Default,
        type_ddl: Vec::new(),
    }
}

/// The e2e bench's eight columns (`bench.t`): tenant and id (the key), then numeric,
/// timestamptz, jsonb, text, bool and int.
#[allow(dead_code)] // not every bench that includes this file uses it
pub const BENCH_COLUMNS: [(&str, &str); 8] = [
    ("tenant_id", "integer"),
    ("id", "bigint"),
    ("amount", "numeric(12,2)"),
    ("at", "timestamp with time zone"),
    ("payload", "jsonb"),
    ("note", "text"),
    ("flag", "boolean"),
    ("qty", "integer"),
];
