//! The server's clock: the current time, and milliseconds since the epoch (how expiries are
//! stored and compared) as times.

use chrono::{DateTime, Utc};

/// Now.
pub fn now() -> DateTime<Utc> {
    Utc::now()
}

/// Now in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Milliseconds since the epoch as a time (the epoch itself for values out of range, which
/// the server never stores).
pub fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A duration in milliseconds, saturating.
pub fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
