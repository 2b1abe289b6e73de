//! How `tenants.include` is read and written: `"all"`, or a list of tenant ids given as
//! integers or strings (compared as text; a repeated id is an error); and the SQL
//! conditions that keep the listed tenants' rows.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use super::{TenantFilter, TenantKey};
use crate::change::TableInfo;
use crate::sql_text::{quote_ident, quote_literal};

impl TenantFilter {
    /// Whether the filter keeps tenant `id` (compared as text).
    pub fn includes(&self, id: &str) -> bool {
        match self {
            TenantFilter::All => true,
            TenantFilter::Only(ids) => ids.contains(id),
        }
    }

    /// `<tenant>::text IN ('id', …)`, the condition that keeps the listed tenants' rows
    /// (ids compare as text; `<tenant>` is [`TenantKey::sql`]); `None` for all tenants.
    pub fn sql_condition(&self, key: &TenantKey) -> Option<String> {
        self.listed(|ids| format!("{}::text IN ({ids})", key.sql()))
    }

    /// ` WHERE <condition>` keeping the job's tenants' rows of `table`
    /// ([`TenantFilter::condition_on`]), to append to a statement; empty for all tenants.
    pub fn where_clause_on(&self, table: &TableInfo, key: &TenantKey) -> String {
        self.condition_on(table, key)
            .map_or_else(String::new, |c| format!(" WHERE {c}"))
    }

    /// The condition that keeps the listed tenants' rows of `table`, in a form an index on
    /// (or a partitioning by) the tenant column can serve where the column's type allows:
    /// for an integer or UUID column, `"column" IN ('id', …)` with only the ids that are a
    /// value's text form (canonical decimal within the type's range, or a lowercase UUID;
    /// no other id can equal a value's text), the literals taking the column's type;
    /// `false` if no id is. Any other type, a column `table` lacks, or a one-tenant table:
    /// [`TenantFilter::sql_condition`]. `None` for all tenants.
    pub fn condition_on(&self, table: &TableInfo, key: &TenantKey) -> Option<String> {
        key.column()
            .and_then(|column| self.value_condition(table, column))
            .or_else(|| self.sql_condition(key))
    }

    /// A publication row filter keeping the listed tenants' rows: as
    /// [`TenantFilter::condition_on`] for integer and UUID columns; any other type
    /// compares `"column" IN ('id', …)` with the ids as literals of its type (a row filter
    /// allows no cast whose result depends on settings, as `::text` of a time does; the
    /// dataflow filters by text again, so this only narrows what the source sends). `None`
    /// for a one-tenant table: the job carries it only for a tenant it carries.
    pub fn row_filter_on(&self, table: &TableInfo, key: &TenantKey) -> Option<String> {
        let column = key.column()?;
        self.value_condition(table, column)
            .or_else(|| self.listed(|ids| format!("{} IN ({ids})", quote_ident(column))))
    }

    /// For an integer or UUID `column`: `"column" IN (…)` with the ids that are a value's
    /// text form, `false` if none is. `None` for all tenants and for other types.
    fn value_condition(&self, table: &TableInfo, column: &str) -> Option<String> {
        let TenantFilter::Only(ids) = self else {
            return None;
        };
        let type_oid = table
            .column_index(column)
            .map(|i| table.columns[i].type_oid);
        let holds = type_oid.and_then(text_form_check)?;
        let list: Vec<String> = ids
            .iter()
            .filter(|id| holds(id))
            .map(|id| quote_literal(id))
            .collect();
        if list.is_empty() {
            return Some("false".to_owned());
        }
        Some(format!("{} IN ({})", quote_ident(column), list.join(", ")))
    }

    /// `form` of the quoted, comma-separated ids; `None` for all tenants.
    fn listed(&self, form: impl FnOnce(String) -> String) -> Option<String> {
        match self {
            TenantFilter::All => None,
            TenantFilter::Only(ids) => {
                let list: Vec<String> = ids.iter().map(|t| quote_literal(t)).collect();
                Some(form(list.join(", ")))
            }
        }
    }
}

/// For a type whose values have exactly one text form each and whose literals compare
/// as values (integers, UUIDs): the check that an id is such a text form.
fn text_form_check(type_oid: u32) -> Option<fn(&str) -> bool> {
    match type_oid {
        21 => Some(is_integer_text::<i16>),
        23 => Some(is_integer_text::<i32>),
        20 => Some(is_integer_text::<i64>),
        2950 => Some(is_uuid_text),
        _ => None,
    }
}

/// Whether `id` is how PostgreSQL writes some value of an integer type `T`.
fn is_integer_text<T: std::str::FromStr + ToString>(id: &str) -> bool {
    id.parse::<T>().is_ok_and(|n| n.to_string() == id)
}

/// Whether `id` is how PostgreSQL writes a UUID: 8-4-4-4-12 lowercase hex digits.
fn is_uuid_text(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
}

impl Serialize for TenantFilter {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match self {
            TenantFilter::All => ser.serialize_str("all"),
            TenantFilter::Only(ids) => {
                let mut seq = ser.serialize_seq(Some(ids.len()))?;
                for id in ids {
                    // Ids that are the decimal text of an i64 are written as
                    // integers (they read back to the same text).
                    match id.parse::<i64>() {
                        Ok(n) if n.to_string() == *id => seq.serialize_element(&n)?,
                        _ => seq.serialize_element(id)?,
                    }
                }
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for TenantFilter {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(TenantFilterVisitor)
    }
}

struct TenantFilterVisitor;

impl<'de> Visitor<'de> for TenantFilterVisitor {
    type Value = TenantFilter;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"all\" or an array of tenant ids (integers or strings)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if v == "all" {
            Ok(TenantFilter::All)
        } else {
            Err(E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut ids = BTreeSet::new();
        while let Some(TenantId(id)) = seq.next_element()? {
            if ids.contains(&id) {
                return Err(de::Error::custom(format_args!(
                    "duplicate tenant id `{id}`"
                )));
            }
            ids.insert(id);
        }
        Ok(TenantFilter::Only(ids))
    }
}

/// A list of tenant ids given as integers or strings, as text (for request bodies that
/// name tenants as `tenants.include` does).
pub fn deserialize_tenant_ids<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    let ids: Vec<TenantId> = Vec::deserialize(de)?;
    Ok(ids.into_iter().map(|TenantId(id)| id).collect())
}

/// `tables[].tenant`: one tenant id given as an integer or a string, as text.
pub fn deserialize_one_tenant_id<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Option<String>, D::Error> {
    TenantId::deserialize(de).map(|TenantId(id)| Some(id))
}

/// `tables[].tenant` as [`TenantFilter`]'s ids are written: an integer when the id is
/// one's decimal text.
pub fn serialize_one_tenant_id<S: Serializer>(
    id: &Option<String>,
    ser: S,
) -> Result<S::Ok, S::Error> {
    match id.as_deref().map(|id| (id, id.parse::<i64>())) {
        Some((id, Ok(n))) if n.to_string() == id => ser.serialize_i64(n),
        Some((id, _)) => ser.serialize_str(id),
        None => ser.serialize_none(),
    }
}

/// One element of `tenants.include`, as text.
struct TenantId(String);

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TenantId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a tenant id (integer or string)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TenantId, E> {
                Ok(TenantId(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TenantId, E> {
                Ok(TenantId(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TenantId, E> {
                Ok(TenantId(v.to_owned()))
            }
        }
        de.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{ColumnInfo, Identity};

    fn table_with(type_oid: u32) -> TableInfo {
        TableInfo {
            oid: 1,
            schema: "app".into(),
            name: "t".into(),
            columns: vec![ColumnInfo {
                name: "tenant_id".into(),
                type_oid,
                type_modifier: -1,
                type_name: "x".into(),
                in_identity: true,
                missing_value: None,
                attnum: None,
            }],
            primary_key: vec![0],
            identity: Identity::Default,
            type_ddl: vec![],
        }
    }

    fn col(name: &str) -> TenantKey {
        TenantKey::Column(name.to_owned())
    }

    fn only(ids: &[&str]) -> TenantFilter {
        TenantFilter::Only(ids.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn integer_and_uuid_columns_compare_as_values() {
        let ids = only(&["3", "07", "-5", "40000", "x"]);
        assert_eq!(
            ids.condition_on(&table_with(23), &col("tenant_id"))
                .as_deref(),
            Some("\"tenant_id\" IN ('-5', '3', '40000')"),
            "int4: '07' and 'x' are no int4's text"
        );
        assert_eq!(
            ids.condition_on(&table_with(21), &col("tenant_id"))
                .as_deref(),
            Some("\"tenant_id\" IN ('-5', '3')"),
            "int2: 40000 is out of its range"
        );
        assert_eq!(
            only(&["x", "007"])
                .condition_on(&table_with(20), &col("tenant_id"))
                .as_deref(),
            Some("false")
        );
        let uuids = only(&[
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        ]);
        assert_eq!(
            uuids
                .condition_on(&table_with(2950), &col("tenant_id"))
                .as_deref(),
            Some("\"tenant_id\" IN ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')"),
            "PostgreSQL writes UUIDs in lowercase"
        );
        // Text, and a column the table lacks: compared as text.
        assert_eq!(
            ids.condition_on(&table_with(25), &col("tenant_id")),
            ids.sql_condition(&col("tenant_id"))
        );
        assert_eq!(
            ids.condition_on(&table_with(23), &col("org_id")),
            ids.sql_condition(&col("org_id"))
        );
        assert_eq!(
            TenantFilter::All.condition_on(&table_with(23), &col("tenant_id")),
            None
        );
    }

    #[test]
    fn a_one_tenant_table_is_kept_whole_or_not_at_all_and_has_no_row_filter() {
        let ids = only(&["3", "7"]);
        let seven = TenantKey::Table("7".into());
        let five = TenantKey::Table("5".into());
        assert_eq!(
            ids.condition_on(&table_with(23), &seven).as_deref(),
            Some("'7'::text IN ('3', '7')")
        );
        assert_eq!(
            ids.where_clause_on(&table_with(23), &five),
            " WHERE '5'::text IN ('3', '7')"
        );
        assert_eq!(ids.row_filter_on(&table_with(23), &seven), None);
        assert_eq!(
            ids.row_filter_on(&table_with(23), &col("tenant_id"))
                .as_deref(),
            Some("\"tenant_id\" IN ('3', '7')")
        );
    }
}
