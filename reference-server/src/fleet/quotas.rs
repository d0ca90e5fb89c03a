//! Per-agent quotas on reports: reports per minute, stored bytes per hour and pending approval
//! requests. A spent quota is 429 with `Retry-After`; a repeated report (a known `reportId`) is
//! answered before the quotas are asked, so an agent's outbox resending costs nothing.

use std::time::Duration;

use crate::error::ApiError;
use crate::ratelimit::KeyedLimit;

/// The quotas' sizes (each a server flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Reports per agent and minute (burst: a whole minute's worth); 0: no limit.
    pub reports_per_minute: u32,
    /// KiB of reports (what the audit and approvals keep of them) per agent and hour; 0: no
    /// limit.
    pub kib_per_hour: u32,
    /// Pending approval requests per agent; 0: no limit.
    pub max_pending_approvals: usize,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            reports_per_minute: 600,
            kib_per_hour: 16 * 1024,
            max_pending_approvals: 100,
        }
    }
}

/// Seconds an agent at its pending-approvals quota is asked to wait (approvals are decided or
/// expire on a human's time scale).
pub const PENDING_RETRY_SECS: u64 = 60;

/// Most agents tracked by the rate quotas.
const MAX_AGENTS: usize = 1_000_000;

/// The quotas of every agent.
#[derive(Debug)]
pub struct Quotas {
    reports: Option<KeyedLimit<String>>,
    kib: Option<KeyedLimit<String>>,
    max_pending_approvals: usize,
}

impl Quotas {
    /// Quotas of `config`'s sizes.
    pub fn new(config: QuotaConfig) -> Self {
        Self {
            reports: KeyedLimit::new(
                config.reports_per_minute,
                Duration::from_secs(60),
                MAX_AGENTS,
            ),
            kib: KeyedLimit::new(config.kib_per_hour, Duration::from_secs(3600), MAX_AGENTS),
            max_pending_approvals: config.max_pending_approvals,
        }
    }

    /// Counts one report of `bytes` (serialized) from `agent_id`: 429 when either quota is
    /// spent (the report is then not acted on).
    pub fn admit(&self, agent_id: &str, bytes: usize) -> Result<(), ApiError> {
        let key = agent_id.to_owned();
        if let Some(reports) = &self.reports {
            reports.check(&key).map_err(|retry| {
                ApiError::too_many(
                    format!(
                        "agent `{agent_id}` sent more than {} reports in a minute; retry in {} s",
                        reports.burst(),
                        retry.secs()
                    ),
                    retry.secs(),
                )
            })?;
        }
        if let Some(kib) = &self.kib {
            let cost = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
            kib.check_n(&key, cost).map_err(|retry| {
                ApiError::too_many(
                    format!(
                        "agent `{agent_id}` stored more than {} KiB of reports in an hour; retry in {} s",
                        kib.burst(),
                        retry.secs()
                    ),
                    retry.secs(),
                )
            })?;
        }
        Ok(())
    }

    /// 429 when an agent with `pending` requests may not add one.
    pub fn admit_approval(&self, agent_id: &str, pending: usize) -> Result<(), ApiError> {
        if self.max_pending_approvals == 0 || pending < self.max_pending_approvals {
            return Ok(());
        }
        Err(ApiError::too_many(
            format!(
                "agent `{agent_id}` has {pending} pending approval requests, the most allowed; \
                 retry once an admin decided some"
            ),
            PENDING_RETRY_SECS,
        ))
    }
}
