//! Policy durations: `30s`, `15m`, `24h`, `7d`, `2w` or `permanent`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest finite duration a policy may state: ten years of 365 days.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Unit of a finite [`PolicyDuration`], kept so that `24h` serializes back as `24h`, not `1d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DurationUnit {
    /// `s`
    Seconds,
    /// `m`
    Minutes,
    /// `h`
    Hours,
    /// `d`
    Days,
    /// `w`
    Weeks,
}

impl DurationUnit {
    fn seconds(self) -> u64 {
        match self {
            Self::Seconds => 1,
            Self::Minutes => 60,
            Self::Hours => 3_600,
            Self::Days => 86_400,
            Self::Weeks => 604_800,
        }
    }

    fn suffix(self) -> char {
        match self {
            Self::Seconds => 's',
            Self::Minutes => 'm',
            Self::Hours => 'h',
            Self::Days => 'd',
            Self::Weeks => 'w',
        }
    }
}

/// A block duration or counting window as written in a policy.
///
/// ```
/// use policy_engine::PolicyDuration;
/// let d: PolicyDuration = "24h".parse().unwrap();
/// assert_eq!(d.as_duration(), Some(std::time::Duration::from_secs(86_400)));
/// assert_eq!(d.to_string(), "24h");
/// assert!("permanent".parse::<PolicyDuration>().unwrap().is_permanent());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyDuration {
    /// `amount` units, at least one and at most [`MAX_DURATION`] in total.
    Finite {
        /// How many units.
        amount: u64,
        /// Which unit.
        unit: DurationUnit,
    },
    /// Never expires.
    Permanent,
}

impl PolicyDuration {
    /// A finite duration of whole seconds (clamped into the valid range).
    pub fn from_secs(secs: u64) -> Self {
        Self::Finite {
            amount: secs.clamp(1, MAX_DURATION.as_secs()),
            unit: DurationUnit::Seconds,
        }
    }

    /// The length, or `None` for `permanent`.
    pub fn as_duration(&self) -> Option<Duration> {
        match *self {
            Self::Finite { amount, unit } => {
                Some(Duration::from_secs(amount.saturating_mul(unit.seconds())))
            }
            Self::Permanent => None,
        }
    }

    /// Whether this is `permanent`.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent)
    }
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not of the form `<n><unit>` or `permanent`.
    #[error("expected a duration like `30s`, `15m`, `24h`, `7d`, `2w` or `permanent`, found `{0}`")]
    Syntax(String),
    /// Zero.
    #[error("duration must be at least 1, found `{0}`")]
    Zero(String),
    /// Longer than ten years.
    #[error("duration must be at most 10 years (3650d), found `{0}`")]
    TooLong(String),
}

impl FromStr for PolicyDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "permanent" {
            return Ok(Self::Permanent);
        }
        let syntax = || DurationError::Syntax(s.to_owned());
        let last = s.chars().last().ok_or_else(syntax)?;
        let unit = match last {
            's' => DurationUnit::Seconds,
            'm' => DurationUnit::Minutes,
            'h' => DurationUnit::Hours,
            'd' => DurationUnit::Days,
            'w' => DurationUnit::Weeks,
            _ => return Err(syntax()),
        };
        let digits = s.get(..s.len() - 1).ok_or_else(syntax)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let amount: u64 = match digits.parse() {
            Ok(n) => n,
            // All digits, so the only failure is overflow: certainly more than ten years.
            Err(_) => return Err(DurationError::TooLong(s.to_owned())),
        };
        if amount == 0 {
            return Err(DurationError::Zero(s.to_owned()));
        }
        match amount.checked_mul(unit.seconds()) {
            Some(secs) if secs <= MAX_DURATION.as_secs() => Ok(Self::Finite { amount, unit }),
            _ => Err(DurationError::TooLong(s.to_owned())),
        }
    }
}

impl fmt::Display for PolicyDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Finite { amount, unit } => write!(f, "{amount}{}", unit.suffix()),
            Self::Permanent => f.write_str("permanent"),
        }
    }
}

impl Serialize for PolicyDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PolicyDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        for (text, secs) in [
            ("30s", 30),
            ("15m", 900),
            ("24h", 86_400),
            ("7d", 604_800),
            ("2w", 1_209_600),
        ] {
            let d: PolicyDuration = text.parse().unwrap();
            assert_eq!(d.as_duration(), Some(Duration::from_secs(secs)), "{text}");
            assert_eq!(d.to_string(), text);
        }
    }

    #[test]
    fn rejects_bad_forms_with_the_input_in_the_message() {
        let cases = [
            (
                "",
                "expected a duration like `30s`, `15m`, `24h`, `7d`, `2w` or `permanent`, found ``",
            ),
            (
                "h",
                "expected a duration like `30s`, `15m`, `24h`, `7d`, `2w` or `permanent`, found `h`",
            ),
            (
                "1.5h",
                "expected a duration like `30s`, `15m`, `24h`, `7d`, `2w` or `permanent`, found `1.5h`",
            ),
            (
                "-1h",
                "expected a duration like `30s`, `15m`, `24h`, `7d`, `2w` or `permanent`, found `-1h`",
            ),
            (
                "1y",
                "expected a duration like `30s`, `15m`, `24h`, `7d`, `2w` or `permanent`, found `1y`",
            ),
            ("0s", "duration must be at least 1, found `0s`"),
            (
                "3651d",
                "duration must be at most 10 years (3650d), found `3651d`",
            ),
            (
                "99999999999999999999999w",
                "duration must be at most 10 years (3650d), found `99999999999999999999999w`",
            ),
            (
                "18446744073709551615w",
                "duration must be at most 10 years (3650d), found `18446744073709551615w`",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(
                text.parse::<PolicyDuration>().unwrap_err().to_string(),
                message
            );
        }
    }

    #[test]
    fn ten_years_is_the_inclusive_limit() {
        assert!("3650d".parse::<PolicyDuration>().is_ok());
        assert!("521w".parse::<PolicyDuration>().is_ok());
        assert!("522w".parse::<PolicyDuration>().is_err());
    }
}
