//! How `tenants.include` is read and written: `"all"`, or a list of tenant ids given as
//! integers or strings (compared as text; a repeated id is an error); and the SQL
//! condition that keeps the listed tenants' rows.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use super::TenantFilter;
use crate::sql_text::{quote_ident, quote_literal};

impl TenantFilter {
    /// `"column"::text IN ('id', …)`, the condition that keeps the listed tenants' rows
    /// (ids compare as text); `None` for all tenants.
    pub fn sql_condition(&self, column: &str) -> Option<String> {
        match self {
            TenantFilter::All => None,
            TenantFilter::Only(ids) => {
                let list: Vec<String> = ids.iter().map(|t| quote_literal(t)).collect();
                Some(format!(
                    "{}::text IN ({})",
                    quote_ident(column),
                    list.join(", ")
                ))
            }
        }
    }
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
