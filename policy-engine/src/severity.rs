//! Threat severities, ordered from `info` to `critical`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How serious a threat is. Ordered: `Info < Low < Medium < High < Critical`.
///
/// ```
/// use policy_engine::Severity;
/// assert!(Severity::Critical > Severity::High);
/// assert_eq!("medium".parse::<Severity>().unwrap().level(), 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Level 0.
    Info,
    /// Level 1.
    Low,
    /// Level 2.
    Medium,
    /// Level 3.
    High,
    /// Level 4.
    Critical,
}

impl Severity {
    /// All severities, lowest first.
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// 0 for `info` up to 4 for `critical` (the `severityLevel` variable of conditions).
    pub fn level(self) -> u8 {
        self as u8
    }

    /// The lowercase name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is none of the five severity names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected one of `info`, `low`, `medium`, `high`, `critical`, found `{0}`")]
pub struct SeverityError(pub String);

impl FromStr for Severity {
    type Err = SeverityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "info" => Ok(Self::Info),
            "low" => Ok(Self::Low),
            "medium" => Ok(Self::Medium),
            "high" => Ok(Self::High),
            "critical" => Ok(Self::Critical),
            other => Err(SeverityError(other.to_owned())),
        }
    }
}
