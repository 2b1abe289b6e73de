//! The Arrow schema of a cold-tier file and the conversions between PostgreSQL's text
//! form and the stored values.
//!
//! User columns come first, typed from their PostgreSQL type (`smallint`/`integer` →
//! Int32, `bigint` → Int64, `real` → Float32, `double precision` → Float64, `boolean` →
//! Boolean, anything else Utf8 holding the text form); then the fixed columns
//! ([`FIXED_COLUMNS`]). Every typed conversion round-trips exactly: text is accepted only
//! in the form PostgreSQL prints it, so converting back reproduces the same text.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::{ColdColumn, ColdRow, ParquetError};

/// Names of the fixed columns that follow the user columns, in file order.
pub const FIXED_COLUMNS: [&str; 9] = [
    "event",
    "op",
    "valid_from",
    "valid_to",
    "system_from",
    "system_to",
    "system_from_lsn",
    "system_to_lsn",
    "tombstone",
];

/// Arrow field-metadata key holding a user column's PostgreSQL type name.
pub const PG_TYPE_KEY: &str = "pg_type";

/// Field metadata key of a user column's number in the source's catalog
/// ([`ColdColumn::attnum`]), where known.
pub const ATTNUM_KEY: &str = "helios.attnum";

/// Time zone of the timestamp columns.
pub const TIMESTAMP_TZ: &str = "UTC";

/// 2000-01-01 00:00 UTC (PostgreSQL's epoch) in microseconds since the Unix epoch.
pub use crate::time_text::PG_EPOCH_UNIX_MICROS;

/// How a user column is stored, decided by its PostgreSQL type name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredKind {
    /// `smallint`: Arrow Int32, values limited to the `i16` range.
    Int16,
    /// `integer`: Arrow Int32.
    Int32,
    /// `bigint`: Arrow Int64.
    Int64,
    /// `real`: Arrow Float32.
    Float32,
    /// `double precision`: Arrow Float64.
    Float64,
    /// `boolean`: Arrow Boolean.
    Bool,
    /// Everything else: Arrow Utf8 holding PostgreSQL's text form verbatim.
    Text,
}

impl StoredKind {
    /// The storage kind for a PostgreSQL type name (`format_type` output; the internal
    /// names `int2`, `int4`, `int8`, `float4`, `float8`, `bool` are accepted too).
    pub fn of(pg_type: &str) -> StoredKind {
        match pg_type {
            "smallint" | "int2" => StoredKind::Int16,
            "integer" | "int" | "int4" => StoredKind::Int32,
            "bigint" | "int8" => StoredKind::Int64,
            "real" | "float4" => StoredKind::Float32,
            "double precision" | "float8" => StoredKind::Float64,
            "boolean" | "bool" => StoredKind::Bool,
            _ => StoredKind::Text,
        }
    }

    /// The Arrow type values of this kind are stored as.
    pub fn data_type(self) -> DataType {
        match self {
            StoredKind::Int16 | StoredKind::Int32 => DataType::Int32,
            StoredKind::Int64 => DataType::Int64,
            StoredKind::Float32 => DataType::Float32,
            StoredKind::Float64 => DataType::Float64,
            StoredKind::Bool => DataType::Boolean,
            StoredKind::Text => DataType::Utf8,
        }
    }
}

/// The Arrow type of the four timestamp columns: microseconds, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(TIMESTAMP_TZ.into()))
}

/// The Arrow schema of a file holding rows of a table with these columns: the user
/// columns (typed from their PostgreSQL type, all nullable, the type name kept in the
/// field metadata under [`PG_TYPE_KEY`]) followed by the fixed columns.
///
/// A user column named like a fixed column, or two user columns with the same name, is
/// an error naming the column.
pub fn arrow_schema(columns: &[ColdColumn]) -> Result<SchemaRef, ParquetError> {
    let mut seen = HashSet::new();
    let mut fields = Vec::with_capacity(columns.len() + FIXED_COLUMNS.len());
    for column in columns {
        if FIXED_COLUMNS.contains(&column.name.as_str()) {
            return Err(ParquetError::ReservedColumn {
                column: column.name.clone(),
            });
        }
        if !seen.insert(column.name.as_str()) {
            return Err(ParquetError::DuplicateColumn {
                column: column.name.clone(),
            });
        }
        let mut metadata = HashMap::from([(PG_TYPE_KEY.to_string(), column.pg_type.clone())]);
        if let Some(attnum) = column.attnum {
            metadata.insert(ATTNUM_KEY.to_string(), attnum.to_string());
        }
        fields.push(
            Field::new(
                &column.name,
                StoredKind::of(&column.pg_type).data_type(),
                true,
            )
            .with_metadata(metadata),
        );
    }
    fields.push(Field::new("event", DataType::Utf8, false));
    fields.push(Field::new("op", DataType::Utf8, false));
    fields.push(Field::new("valid_from", timestamp_type(), false));
    fields.push(Field::new("valid_to", timestamp_type(), true));
    fields.push(Field::new("system_from", timestamp_type(), false));
    fields.push(Field::new("system_to", timestamp_type(), true));
    fields.push(Field::new("system_from_lsn", DataType::UInt64, false));
    fields.push(Field::new("system_to_lsn", DataType::UInt64, true));
    fields.push(Field::new("tombstone", DataType::Boolean, false));
    Ok(Arc::new(Schema::new(fields)))
}

/// Recovers the user columns from a file's Arrow schema: every field that is not a
/// fixed column, in order, with the PostgreSQL type from its metadata. The error is the
/// reason (the caller names the file).
pub fn columns_from_schema(schema: &Schema) -> Result<Vec<ColdColumn>, String> {
    let mut columns = Vec::new();
    for field in schema.fields() {
        if FIXED_COLUMNS.contains(&field.name().as_str()) {
            continue;
        }
        let Some(pg_type) = field.metadata().get(PG_TYPE_KEY) else {
            return Err(format!(
                "column {:?} has no {PG_TYPE_KEY:?} metadata",
                field.name()
            ));
        };
        columns.push(ColdColumn {
            attnum: field_attnum(field),
            ..ColdColumn::new(field.name().clone(), pg_type.clone())
        });
    }
    Ok(columns)
}

/// A field's source column number ([`ATTNUM_KEY`]), if it was written with one.
pub fn field_attnum(field: &Field) -> Option<i16> {
    field.metadata().get(ATTNUM_KEY)?.parse().ok()
}

/// Where each of `columns` is among `schema`'s fields: the field written with the
/// column's number where both have one (a renamed column's files hold it under the name
/// it had then, and two columns that swapped names are told apart); else the field of
/// its name, then of a former name (latest first), unless that field was written with
/// another column's number.
pub fn column_plan(schema: &Schema, columns: &[ColdColumn]) -> Vec<Option<usize>> {
    columns
        .iter()
        .map(|c| {
            let numbered = c.attnum.and_then(|a| {
                schema
                    .fields()
                    .iter()
                    .position(|f| field_attnum(f) == Some(a))
            });
            numbered.or_else(|| {
                std::iter::once(&c.name)
                    .chain(c.former_names.iter().rev())
                    .filter_map(|name| schema.index_of(name).ok())
                    .find(|&i| match (c.attnum, field_attnum(schema.field(i))) {
                        (Some(a), Some(f)) => a == f,
                        _ => true,
                    })
            })
        })
        .collect()
}

/// PostgreSQL microseconds (since 2000-01-01) to Arrow's (since 1970-01-01); `None` on
/// overflow.
pub fn pg_to_arrow_micros(pg_micros: i64) -> Option<i64> {
    pg_micros.checked_add(PG_EPOCH_UNIX_MICROS)
}

/// Arrow microseconds (since 1970-01-01) to PostgreSQL's (since 2000-01-01); `None` on
/// overflow.
pub fn arrow_to_pg_micros(arrow_micros: i64) -> Option<i64> {
    arrow_micros.checked_sub(PG_EPOCH_UNIX_MICROS)
}

// ---------------------------------------------------------------------------------------
// Text form <-> typed values.
// ---------------------------------------------------------------------------------------

/// Parses `text` as a `T` and accepts it only if `print` gives the same text back (the
/// form PostgreSQL prints), so the stored value converts back exactly. `kind` names the
/// parse failure ("an integer"), `type_name` the SQL type in the other error.
fn parse_canonical<T: std::str::FromStr>(
    text: &str,
    kind: &str,
    type_name: &str,
    print: impl Fn(&T) -> String,
) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let value: T = text
        .parse()
        .map_err(|e| format!("value is not {kind} ({e})"))?;
    if print(&value) != text {
        return Err(format!(
            "{type_name} value is not in the form PostgreSQL prints"
        ));
    }
    Ok(value)
}

/// Parses an integer in the only form PostgreSQL prints: an optional `-`, then digits
/// without leading zeros (`0` alone for zero, never `-0`). Checked on the text, without
/// printing the value back (one allocation per cell saved on the cold tier's hot path).
fn parse_canonical_integer<T: std::str::FromStr>(text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let value: T = text
        .parse()
        .map_err(|e| format!("value is not an integer ({e})"))?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" && digits.len() == text.len() || !digits.starts_with('0'));
    if !canonical {
        return Err("integer value is not in the form PostgreSQL prints".to_string());
    }
    Ok(value)
}

/// Parses a `smallint` (`i16` range) or `integer` in PostgreSQL's text form.
pub fn text_to_i32(text: &str, smallint: bool) -> Result<i32, String> {
    let value = parse_canonical_integer::<i32>(text)?;
    if smallint && i16::try_from(value).is_err() {
        return Err("value is out of range for smallint".to_string());
    }
    Ok(value)
}

/// Parses a `bigint` in PostgreSQL's text form.
pub fn text_to_i64(text: &str) -> Result<i64, String> {
    parse_canonical_integer(text)
}

/// Parses a `boolean` in PostgreSQL's text form (`t` or `f`).
pub fn text_to_bool(text: &str) -> Result<bool, String> {
    match text {
        "t" => Ok(true),
        "f" => Ok(false),
        _ => Err("value is not a boolean (expected \"t\" or \"f\")".to_string()),
    }
}

/// A `boolean` in PostgreSQL's text form.
pub fn bool_to_text(value: bool) -> &'static str {
    if value {
        "t"
    } else {
        "f"
    }
}

/// Parses a `double precision` in PostgreSQL's text form (shortest round-trip digits,
/// `NaN`, `Infinity`, `-Infinity`, `-0`). Text PostgreSQL would not print for that value
/// (e.g. with `extra_float_digits = 3`) is refused, so [`f64_to_text`] gives it back
/// exactly.
pub fn text_to_f64(text: &str) -> Result<f64, String> {
    parse_canonical(text, "a floating-point number", "double precision", |v| {
        f64_to_text(*v)
    })
}

/// Parses a `real` in PostgreSQL's text form; see [`text_to_f64`].
pub fn text_to_f32(text: &str) -> Result<f32, String> {
    parse_canonical(text, "a floating-point number", "real", |v| f32_to_text(*v))
}

/// A `double precision` the way PostgreSQL prints it (`extra_float_digits > 0`, the
/// default since PostgreSQL 12): shortest round-trip digits, fixed notation for decimal
/// exponents -4..=14, otherwise `d.ddde+XX`.
pub fn f64_to_text(value: f64) -> String {
    special_float_text(value).unwrap_or_else(|| {
        layout_float(value.is_sign_negative(), &format!("{:e}", value.abs()), 15)
    })
}

/// A `real` the way PostgreSQL prints it: like [`f64_to_text`] with fixed notation for
/// decimal exponents -4..=5.
pub fn f32_to_text(value: f32) -> String {
    special_float_text(f64::from(value))
        .unwrap_or_else(|| layout_float(value.is_sign_negative(), &format!("{:e}", value.abs()), 6))
}

/// PostgreSQL's text for NaN, the infinities and the signed zeros (the same for `real`,
/// which widens to these exactly); `None` for any other value.
fn special_float_text(value: f64) -> Option<String> {
    let text = if value.is_nan() {
        "NaN"
    } else if value.is_infinite() {
        if value < 0.0 {
            "-Infinity"
        } else {
            "Infinity"
        }
    } else if value == 0.0 {
        if value.is_sign_negative() {
            "-0"
        } else {
            "0"
        }
    } else {
        return None;
    };
    Some(text.to_string())
}

/// Lays out Rust's shortest scientific form (`1.2345e-5`) of a positive finite number
/// the way PostgreSQL's Ryu-based output does: fixed notation when the decimal exponent
/// is in `-4..fixed_below`, else scientific with a signed, at least two-digit exponent.
fn layout_float(negative: bool, scientific: &str, fixed_below: i32) -> String {
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((scientific, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = if digits.is_empty() {
        "0".to_string()
    } else {
        digits
    };
    let (exp_negative, exp_digits) = match exponent.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, exponent),
    };
    let magnitude = exp_digits.bytes().fold(0i32, |acc, b| {
        acc.saturating_mul(10)
            .saturating_add(i32::from(b.wrapping_sub(b'0')))
    });
    let exp = if exp_negative { -magnitude } else { magnitude };

    let mut out = String::with_capacity(digits.len() + 8);
    if negative {
        out.push('-');
    }
    if (-4..fixed_below).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            for _ in 0..(-exp - 1) {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            let int_len = usize::try_from(exp).unwrap_or(0) + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                for _ in digits.len()..int_len {
                    out.push('0');
                }
            } else {
                let (int_part, frac_part) = digits.split_at(int_len);
                out.push_str(int_part);
                out.push('.');
                out.push_str(frac_part);
            }
        }
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exp.unsigned_abs()));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Rows -> record batch.
// ---------------------------------------------------------------------------------------

/// Builds the record batch of `rows` (each with its index in the caller's write, used in
/// error messages) for a file at `path`, after checking every value converts.
pub(crate) fn build_batch(
    schema: &SchemaRef,
    columns: &[ColdColumn],
    rows: &[(usize, &ColdRow)],
    path: &Path,
) -> Result<RecordBatch, ParquetError> {
    for (row_index, row) in rows {
        if row.values.len() != columns.len() {
            return Err(ParquetError::BadRow {
                row: *row_index,
                reason: format!("{} values for {} columns", row.values.len(), columns.len()),
            });
        }
    }
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len() + FIXED_COLUMNS.len());
    for (col_index, column) in columns.iter().enumerate() {
        arrays.push(user_array(column, col_index, rows)?);
    }
    arrays.push(Arc::new(StringArray::from_iter_values(
        rows.iter().map(|(_, r)| r.event.as_str()),
    )));
    arrays.push(Arc::new(StringArray::from_iter_values(
        rows.iter().map(|(_, r)| r.op.as_str()),
    )));
    arrays.push(timestamps(rows, "valid_from", |r| Some(r.valid_from))?);
    arrays.push(timestamps(rows, "valid_to", |r| r.valid_to)?);
    arrays.push(timestamps(rows, "system_from", |r| Some(r.system_from))?);
    arrays.push(timestamps(rows, "system_to", |r| r.system_to)?);
    arrays.push(Arc::new(UInt64Array::from_iter_values(
        rows.iter().map(|(_, r)| r.system_from_lsn),
    )));
    arrays.push(Arc::new(UInt64Array::from_iter(
        rows.iter().map(|(_, r)| r.system_to_lsn),
    )));
    arrays.push(Arc::new(BooleanArray::from_iter(
        rows.iter().map(|(_, r)| Some(r.tombstone)),
    )));
    RecordBatch::try_new(schema.clone(), arrays).map_err(|source| ParquetError::Arrow {
        path: path.to_path_buf(),
        source,
    })
}

fn timestamps(
    rows: &[(usize, &ColdRow)],
    name: &str,
    get: impl Fn(&ColdRow) -> Option<i64>,
) -> Result<ArrayRef, ParquetError> {
    let mut values = Vec::with_capacity(rows.len());
    for (row_index, row) in rows {
        let value = match get(row) {
            None => None,
            Some(pg) => Some(pg_to_arrow_micros(pg).ok_or_else(|| ParquetError::BadRow {
                row: *row_index,
                reason: format!("{name} {pg} is outside the range of a microsecond timestamp"),
            })?),
        };
        values.push(value);
    }
    Ok(Arc::new(
        TimestampMicrosecondArray::from(values).with_timezone(TIMESTAMP_TZ),
    ))
}

fn user_array(
    column: &ColdColumn,
    col_index: usize,
    rows: &[(usize, &ColdRow)],
) -> Result<ArrayRef, ParquetError> {
    let texts = rows.iter().map(|(row_index, row)| {
        (
            *row_index,
            row.values.get(col_index).and_then(|v| v.as_deref()),
        )
    });
    let bad = |row: usize, reason: String| ParquetError::BadValue {
        row,
        column: column.name.clone(),
        pg_type: column.pg_type.clone(),
        reason,
    };
    fn convert<'a, T>(
        texts: impl Iterator<Item = (usize, Option<&'a str>)>,
        parse: impl Fn(&str) -> Result<T, String>,
        bad: impl Fn(usize, String) -> ParquetError,
    ) -> Result<Vec<Option<T>>, ParquetError> {
        texts
            .map(|(row, text)| text.map(|t| parse(t).map_err(|e| bad(row, e))).transpose())
            .collect()
    }
    Ok(match StoredKind::of(&column.pg_type) {
        StoredKind::Int16 => Arc::new(Int32Array::from(convert(
            texts,
            |t| text_to_i32(t, true),
            bad,
        )?)),
        StoredKind::Int32 => Arc::new(Int32Array::from(convert(
            texts,
            |t| text_to_i32(t, false),
            bad,
        )?)),
        StoredKind::Int64 => Arc::new(Int64Array::from(convert(texts, text_to_i64, bad)?)),
        StoredKind::Float32 => Arc::new(Float32Array::from(convert(texts, text_to_f32, bad)?)),
        StoredKind::Float64 => Arc::new(Float64Array::from(convert(texts, text_to_f64, bad)?)),
        StoredKind::Bool => Arc::new(BooleanArray::from(convert(texts, text_to_bool, bad)?)),
        StoredKind::Text => Arc::new(StringArray::from_iter(texts.map(|(_, t)| t))),
    })
}
