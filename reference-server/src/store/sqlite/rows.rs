//! Reading typed values out of text columns: a value that does not parse is a conversion
//! error (the file was edited by hand), reported with its column, never a panic.

use chrono::{DateTime, Utc};
use policy_engine::protocol::time;
use rusqlite::Row;
use rusqlite::types::Type;

/// A text column parsed with `FromStr`.
pub fn parsed<T>(row: &Row<'_>, index: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    row.get::<_, String>(index)?
        .parse()
        .map_err(|e| conversion(index, e))
}

/// An optional text column parsed with `FromStr`.
pub fn parsed_opt<T>(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<T>>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    row.get::<_, Option<String>>(index)?
        .map(|text| text.parse().map_err(|e| conversion(index, e)))
        .transpose()
}

/// A stored RFC 3339 time.
pub fn time_at(row: &Row<'_>, index: usize) -> rusqlite::Result<DateTime<Utc>> {
    time::parse(&row.get::<_, String>(index)?).map_err(|e| conversion(index, e))
}

/// An optional stored RFC 3339 time.
pub fn time_opt(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    row.get::<_, Option<String>>(index)?
        .map(|text| time::parse(&text).map_err(|e| conversion(index, e)))
        .transpose()
}

/// An optional non-negative integer column.
pub fn unsigned_opt(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<u64>> {
    Ok(row
        .get::<_, Option<i64>>(index)?
        .and_then(|n| u64::try_from(n).ok()))
}

/// An optional JSON text column read as `T`.
pub fn json_opt<T: serde::de::DeserializeOwned>(
    row: &Row<'_>,
    index: usize,
) -> rusqlite::Result<Option<T>> {
    row.get::<_, Option<String>>(index)?
        .map(|text| serde_json::from_str(&text).map_err(|e| conversion(index, e)))
        .transpose()
}

/// How times are stored: the wire form, so that text order is time order.
pub fn time_text(at: &DateTime<Utc>) -> String {
    time::format(at)
}

fn conversion(
    index: usize,
    error: impl std::error::Error + Send + Sync + 'static,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(error))
}
