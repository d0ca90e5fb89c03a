//! Times on the wire: RFC 3339 in UTC with milliseconds (`2026-03-07T12:00:00.000Z`) when
//! written; any RFC 3339 time (any offset, any fraction) when read.
//!
//! Fields use `#[serde(with = "time::millis")]` (or `time::millis_opt` for an optional time), so
//! both ends hold a `DateTime<Utc>` and only the text form is defined here.

use chrono::{DateTime, SecondsFormat, Utc};

/// A time as written on the wire: `2026-03-07T12:00:00.000Z`.
///
/// ```
/// use policy_engine::protocol::time;
/// let t = time::parse("2026-03-07T13:00:00+01:00").unwrap();
/// assert_eq!(time::format(&t), "2026-03-07T12:00:00.000Z");
/// assert_eq!(
///     time::parse("yesterday").unwrap_err().to_string(),
///     "expected an RFC 3339 time like `2026-03-07T12:00:00.000Z`, found `yesterday`"
/// );
/// ```
pub fn format(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Reads an RFC 3339 time with any offset, as UTC.
pub fn parse(text: &str) -> Result<DateTime<Utc>, TimeError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| TimeError(text.chars().take(64).collect()))
}

/// Milliseconds since the Unix epoch as a time (`None` out of chrono's range).
pub fn from_millis(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// A string that is not an RFC 3339 time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected an RFC 3339 time like `2026-03-07T12:00:00.000Z`, found `{0}`")]
pub struct TimeError(pub String);

/// Serde for a `DateTime<Utc>` field in the wire form.
pub mod millis {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `2026-03-07T12:00:00.000Z`.
    pub fn serialize<S: Serializer>(
        time: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format(time))
    }

    /// Reads any RFC 3339 time.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        super::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde for an `Option<DateTime<Utc>>` field in the wire form (`null` when `None`).
pub mod millis_opt {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `2026-03-07T12:00:00.000Z` or `null`.
    pub fn serialize<S: Serializer>(
        time: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => serializer.serialize_str(&super::format(time)),
            None => serializer.serialize_none(),
        }
    }

    /// Reads any RFC 3339 time, or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        let text = <Option<std::borrow::Cow<'de, str>>>::deserialize(deserializer)?;
        text.map(|text| super::parse(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}
