//! Typed values out of rows: a value that does not read is [`StoreError::Corrupt`] naming its
//! column, never a panic; times are stored in milliseconds, as the wire shows them.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use super::Result;
use crate::clock;
use crate::store::StoreError;

/// Column `name` of `row`.
pub fn get<'a, T: FromSql<'a>>(row: &'a Row, name: &str) -> Result<T> {
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("column `{name}`: {e}")))
}

/// A text column parsed with `FromStr`.
pub fn parsed<T>(row: &Row, name: &str) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text: String = get(row, name)?;
    text.parse()
        .map_err(|e| StoreError::Corrupt(format!("column `{name}`: `{text}`: {e}")))
}

/// An optional text column parsed with `FromStr`.
pub fn parsed_opt<T>(row: &Row, name: &str) -> Result<Option<T>>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text: Option<String> = get(row, name)?;
    text.map(|text| {
        text.parse()
            .map_err(|e| StoreError::Corrupt(format!("column `{name}`: `{text}`: {e}")))
    })
    .transpose()
}

/// An optional text column holding JSON.
pub fn json_opt<T: serde::de::DeserializeOwned>(row: &Row, name: &str) -> Result<Option<T>> {
    let text: Option<String> = get(row, name)?;
    text.map(|text| {
        serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("column `{name}`: {e}")))
    })
    .transpose()
}

/// An optional non-negative integer column.
pub fn unsigned_opt(row: &Row, name: &str) -> Result<Option<u64>> {
    let value: Option<i64> = get(row, name)?;
    Ok(value.and_then(|n| u64::try_from(n).ok()))
}

/// A time as stored: to the millisecond, as the SQLite backend and the wire keep it.
pub fn stored(at: &DateTime<Utc>) -> DateTime<Utc> {
    clock::from_ms(at.timestamp_millis())
}

/// A non-negative number as a `bigint`.
pub fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
