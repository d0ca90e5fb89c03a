//! Staged rollouts: a new version goes to a growing set of the org's agents (stages by a stable
//! hash of the agent id, or named agents), each stage soaking for a minimum time; agents
//! outside the stage keep the previous version (the server chooses what each stream gets:
//! [`assign`]); a gate (refusals or load errors among the stage's agents, agents going silent,
//! condition errors and action rates from their acks: [`health`])
//! halts the rollout and sends the stage's agents the previous version with `rollbackFrom`;
//! operators pause, resume, advance or abort. Every transition is audited with the record.
//!
//! The gate is evaluated on every heartbeat of an agent of the org, on every read of the
//! rollout, on every operator action, and on a timer ([`check_all_gates`], every
//! `rollout_gate_interval`, 5 s by default) so that a stage whose agents all went silent fails
//! with nobody looking.

use std::collections::HashSet;
use std::sync::Arc;

use policy_engine::protocol::AckStatus;
use policy_engine::protocol::fields::Fields;
use policy_engine::{PolicyVersion, ValidationError};
use serde::Serialize;
use serde_json::Value;

pub use super::assignment::{Assignment, assigned_policy, bucket, check_no_active};
use super::assignment::{assign, effective, in_stage, state_name};
use super::changes::Topic;
use super::health;
use super::notify::NotifyConfig;
use super::policies::{self, Checked, Publication, SignedOrgs};
use super::streams::Publisher;
use crate::auth::{Principal, random_hex};
use crate::clock;
use crate::error::ApiError;
use crate::store::{
    AgentRecord, NewEntry, NewPolicy, Rollout, RolloutGate, RolloutStage, RolloutState, Store,
    StoreError, StoredPolicy,
};

/// Most stages of a rollout.
pub const MAX_STAGES: usize = 10;
/// Most agents named in one stage.
pub const MAX_STAGE_AGENTS: usize = 1000;

/// `POST /api/rollouts` body, read strictly: `{"policy": <document or signed file>,
/// "stages": [{"percent"?, "agents"?, "soakSecs"?}], "gate"?: {...}}`.
#[derive(Debug, Clone)]
pub struct RolloutRequest {
    /// The policy document or signed file, read like a `POST /api/policy` body.
    pub policy: Value,
    /// The stages.
    pub stages: Vec<RolloutStage>,
    /// The gate.
    pub gate: RolloutGate,
}

/// A `POST /api/rollouts` body read on past its errors ([`RolloutRequest::read`]).
#[derive(Debug, Clone)]
pub struct ReadRollout {
    /// The request as far as it reads.
    pub request: RolloutRequest,
    /// Every error of the body's shape (stages, gate, unknown fields), with its path.
    pub errors: Vec<ValidationError>,
    /// Every agent id the stages name, with its path (`stages[0].agents[1]`): they must be
    /// enrolled agents of the rollout's org, which is known only once its policy is read.
    pub named: Vec<(String, String)>,
}

impl RolloutRequest {
    /// Reads a body, on past its errors: each with its path (the caller answers 422 with
    /// them and with those of the named agents, [`create`]).
    pub fn read(body: &Value) -> ReadRollout {
        let mut fields = Fields::default();
        let mut stages = Vec::new();
        let mut named = Vec::new();
        let mut gate = RolloutGate::default();
        let mut policy = Value::Null;
        if let Some(map) = fields.object(body, "", &["policy", "stages", "gate"]) {
            match map.get("policy") {
                Some(value) if value.is_object() => policy = value.clone(),
                Some(_) => fields.push("policy", "expected a policy document (an object)"),
                None => fields.push("policy", "missing required field `policy`"),
            }
            match map.get("stages").and_then(Value::as_array) {
                Some(list) if !list.is_empty() && list.len() <= MAX_STAGES => {
                    for (i, stage) in list.iter().enumerate() {
                        let path = format!("stages[{i}]");
                        if let Some(stage) = read_stage(&mut fields, &mut named, stage, &path) {
                            stages.push(stage);
                        }
                    }
                }
                _ => fields.push(
                    "stages",
                    format!("expected an array of 1 to {MAX_STAGES} stages"),
                ),
            }
            if let Some(value) = map.get("gate") {
                gate = read_gate(&mut fields, value);
            }
        }
        if fields.errors.is_empty() {
            let percents: Vec<u8> = stages.iter().map(|s| s.percent).collect();
            if percents.windows(2).any(|w| w.first() > w.get(1)) {
                fields.push("stages", "stage percents must not decrease");
            }
        }
        ReadRollout {
            request: Self {
                policy,
                stages,
                gate,
            },
            errors: fields.errors,
            named,
        }
    }
}

/// Reads one stage; `None` when it cannot be read (its errors in `fields`; the rest of it is
/// still checked). The agent ids it names go to `named` with their paths, for
/// [`unknown_agents`] to check.
fn read_stage(
    fields: &mut Fields,
    named: &mut Vec<(String, String)>,
    value: &Value,
    path: &str,
) -> Option<RolloutStage> {
    let map = fields.object(value, path, &["percent", "agents", "soakSecs"])?;
    let percent = match map.get("percent") {
        None => Some(0),
        Some(v) => match v.as_u64().filter(|p| *p <= 100) {
            Some(p) => Some(u8::try_from(p).unwrap_or(100)),
            None => {
                fields.push(
                    &format!("{path}.percent"),
                    "expected an integer from 0 to 100",
                );
                None
            }
        },
    };
    let mut agents = Vec::new();
    if let Some(v) = map.get("agents") {
        match v.as_array() {
            Some(list) if list.len() <= MAX_STAGE_AGENTS => {
                for (i, id) in list.iter().enumerate() {
                    let at = format!("{path}.agents[{i}]");
                    match id.as_str().filter(|s| !s.is_empty() && s.len() <= 128) {
                        Some(id) => {
                            agents.push(id.to_owned());
                            named.push((at, id.to_owned()));
                        }
                        None => fields.push(&at, "expected an agent id (1 to 128 characters)"),
                    }
                }
            }
            _ => fields.push(
                &format!("{path}.agents"),
                format!("expected an array of at most {MAX_STAGE_AGENTS} agent ids"),
            ),
        }
    }
    if percent == Some(0) && agents.is_empty() {
        fields.push(path, "a stage needs `percent` (1 to 100) or `agents`");
    }
    let soak_secs = match map.get("soakSecs") {
        None => 0,
        Some(v) => match v.as_u64().filter(|s| *s <= 30 * 86_400) {
            Some(s) => s,
            None => {
                fields.push(
                    &format!("{path}.soakSecs"),
                    "expected whole seconds from 0 to 2592000 (30 days)",
                );
                0
            }
        },
    };
    Some(RolloutStage {
        percent: percent?,
        agents,
        soak_secs,
    })
}

/// The errors of the named stage agents that are not enrolled agents of `org` (an unknown id,
/// a typo, another org's agent): such a stage would be empty, count as acked at once and
/// complete the rollout for the whole org.
async fn unknown_agents(
    store: &dyn Store,
    org: &str,
    named: &[(String, String)],
) -> Result<Vec<ValidationError>, StoreError> {
    if named.is_empty() {
        return Ok(Vec::new());
    }
    let enrolled: HashSet<String> = store
        .agents(org.to_owned())
        .await?
        .into_iter()
        .map(|a| a.id)
        .collect();
    Ok(named
        .iter()
        .filter(|(_, id)| !enrolled.contains(id))
        .map(|(path, id)| {
            ValidationError::new(
                path.as_str(),
                format!("`{id}` is not an enrolled agent of org `{org}`"),
            )
        })
        .collect())
}

/// Where an error of a rollout body is, for reporting them in the body's order: unknown fields
/// first, then `policy`, each stage in turn, `gate`.
fn body_position(path: &str) -> (u8, usize) {
    if let Some(rest) = path.strip_prefix("stages") {
        let stage = rest
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .and_then(|(digits, _)| digits.parse().ok())
            .unwrap_or(0);
        (2, stage)
    } else if path == "policy" || path.starts_with("policy.") {
        (1, 0)
    } else if path == "gate" || path.starts_with("gate.") {
        (3, 0)
    } else {
        (0, 0)
    }
}

fn read_gate(fields: &mut Fields, value: &Value) -> RolloutGate {
    let mut gate = RolloutGate::default();
    let Some(map) = fields.object(
        value,
        "gate",
        &[
            "maxFailures",
            "maxSilent",
            "silentAfterSecs",
            "maxConditionErrorPercent",
            "maxActionRatePercent",
            "minEvents",
        ],
    ) else {
        return gate;
    };
    let mut number_from = |key: &str, min: u64, max: u64| -> Option<u64> {
        let v = map.get(key)?;
        let n = v.as_u64().filter(|n| (min..=max).contains(n));
        if n.is_none() {
            fields.push(
                &format!("gate.{key}"),
                format!("expected an integer from {min} to {max}"),
            );
        }
        n
    };
    let mut number = |key: &str, max: u64| number_from(key, 0, max);
    if let Some(n) = number("maxFailures", 1_000_000) {
        gate.max_failures = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(n) = number("maxSilent", 1_000_000) {
        gate.max_silent = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(n) = number("silentAfterSecs", 86_400) {
        gate.silent_after_secs = n.max(1);
    }
    if let Some(n) = number("maxConditionErrorPercent", 100) {
        gate.max_condition_error_percent = u32::try_from(n).ok();
    }
    if let Some(n) = number_from("maxActionRatePercent", 1, 1_000_000) {
        gate.max_action_rate_percent = u32::try_from(n).ok();
    }
    if let Some(n) = number_from("minEvents", 1, 1_000_000_000) {
        gate.min_events = n;
    }
    gate
}

/// A rollout as `GET /api/rollouts/:id` shows it: the record and where each agent stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    /// The record.
    #[serde(flatten)]
    pub rollout: Rollout,
    /// Every agent of the org.
    pub agents: Vec<RolloutAgent>,
}

/// One agent in a rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutAgent {
    /// The agent.
    pub agent_id: String,
    /// In the stage in force (or an earlier one).
    pub in_stage: bool,
    /// The version the server sends it.
    pub assigned_version: PolicyVersion,
    /// The version it reports running.
    pub policy_version: Option<PolicyVersion>,
    /// Its ack of the rollout's version: `applied`, `refused`, `invalid`, or `null` (none yet).
    pub ack: Option<AckStatus>,
}

/// Which operator action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Hold at the current stage.
    Pause,
    /// Continue a paused rollout.
    Resume,
    /// Go to the next stage now (or complete after the last).
    Advance,
    /// Stop and send the stage's agents the previous version.
    Abort,
}

impl Operation {
    /// From the path segment.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "pause" => Self::Pause,
            "resume" => Self::Resume,
            "advance" => Self::Advance,
            "abort" => Self::Abort,
            _ => return None,
        })
    }
}

/// Stores the publication as the org's next version and starts its rollout: only the first
/// stage's agents get it; the others keep the previous version.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    store: &dyn Store,
    publisher: &Publisher,
    channels: Option<&NotifyConfig>,
    signed_orgs: &SignedOrgs,
    principal: &Principal,
    org_query: Option<&str>,
    publication: Publication,
    read: ReadRollout,
) -> Result<RolloutView, ApiError> {
    let ReadRollout {
        request,
        mut errors,
        named,
    } = read;
    let Checked {
        policy,
        org,
        signed,
    } = match policies::check(channels, signed_orgs, principal, org_query, publication) {
        Ok(checked) => checked,
        // The body's own errors come first, as they always did.
        Err(_) if !errors.is_empty() => return Err(ApiError::from_validation(errors)),
        Err(error) => return Err(error),
    };
    // Named agents are checked with the body's other errors: a stage of only unknown agents
    // would be empty, acked at once, and complete the rollout for the whole org.
    errors.extend(unknown_agents(store, &org, &named).await?);
    if !errors.is_empty() {
        errors.sort_by_key(|e| body_position(&e.path));
        return Err(ApiError::from_validation(errors));
    }
    let decisions = publisher.rollout_lock().await;
    check_no_active(store, &org).await?;
    let latest = store
        .latest_policy(org.clone())
        .await?
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "org `{org}` has no version to fall back to: post its first version with `POST /api/policy`"
            ))
        })?;
    // The fallback is what the org runs, not its latest version: after a rollout that was
    // rolled back or aborted, that rollout's previous version (the one it went back to).
    let latest_rollout = store.latest_rollout(org.clone()).await?;
    let previous = effective(latest_rollout.as_ref(), latest.version);
    let now = clock::now_ms();
    let version = PolicyVersion::new(latest.version.number() + 1);
    let mut rollout = Rollout {
        id: format!("ro_{}", random_hex(8)),
        org_id: org.clone(),
        version,
        previous,
        state: RolloutState::Running,
        stage: 0,
        stages: request.stages,
        gate: request.gate,
        stage_started_ms: now,
        created_ms: now,
        updated_ms: now,
        reason: None,
    };
    // The rollout is stored first: should the server stop before the version is, the rollout
    // names a version that does not exist and decides nothing.
    let key_id = signed.as_ref().map(|(_, s)| s.key_id.clone());
    store
        .put_rollout(
            rollout.clone(),
            entry(
                &rollout,
                &principal.actor(),
                "rollout_created",
                Some(serde_json::json!({"signedBy": key_id})),
            ),
        )
        .await?;
    let stored = store
        .insert_policy(NewPolicy {
            org_id: org.clone(),
            policy: Arc::new(policy),
            id: format!("pol_{}", random_hex(8)),
            created_at: clock::now(),
            signed,
        })
        .await;
    let pushed = match stored {
        Ok(stored) if stored.value.version == version => stored.seq,
        other => {
            let created = rollout.clone();
            rollout.state = RolloutState::Aborted;
            rollout.reason = Some("the version could not be stored".to_owned());
            rollout.updated_ms = clock::now_ms();
            let aborted = store
                .move_rollout(
                    created,
                    rollout.clone(),
                    entry(&rollout, "server", "rollout_aborted", None),
                )
                .await?;
            drop(decisions);
            // A version stored under another number goes to every agent: the rollout, aborted,
            // decides nothing.
            publisher.push(store, &org, aborted.seq).await;
            other?;
            return Err(ApiError::internal(
                "the version was stored under another number",
            ));
        }
    };
    drop(decisions);
    // Pushes the rollout's change and its version's: the first stage's agents get it
    // ([`assign`]), on every replica.
    publisher.push(store, &org, pushed).await;
    publisher.changed(&rollout.org_id, CHANGED);
    view_of(store, rollout).await
}

/// The rollout `id` as `principal` may see it, with its gate evaluated first.
pub async fn get(
    store: &dyn Store,
    publisher: &Publisher,
    principal: &Principal,
    org: Option<&str>,
    id: &str,
) -> Result<RolloutView, ApiError> {
    let rollout = visible(store, principal, org, id).await?;
    check_gate(store, publisher, &rollout.org_id).await?;
    let rollout = visible(store, principal, org, id).await?;
    view_of(store, rollout).await
}

/// The rollouts of `org` (newest first, at most `limit`), the running one's gate evaluated
/// first; the console's policies page reads them.
pub async fn list(
    store: &dyn Store,
    publisher: &Publisher,
    org: String,
    limit: u32,
) -> Result<Vec<Rollout>, ApiError> {
    check_gate(store, publisher, &org).await?;
    Ok(store.rollouts(org, limit).await?)
}

/// What a rollout's change shows on the console: the versions agents get, their status, the
/// audit entry.
const CHANGED: &[Topic] = &[Topic::Policies, Topic::Agents, Topic::Audit];

/// Applies an operator's `operation` to rollout `id`.
pub async fn operate(
    store: &dyn Store,
    publisher: &Publisher,
    principal: &Principal,
    org: Option<&str>,
    id: &str,
    operation: Operation,
) -> Result<RolloutView, ApiError> {
    check_gate(
        store,
        publisher,
        &visible(store, principal, org, id).await?.org_id,
    )
    .await?;
    let decisions = publisher.rollout_lock().await;
    let mut rollout = visible(store, principal, org, id).await?;
    if !rollout.state.is_active() {
        return Err(ApiError::conflict(format!(
            "rollout `{id}` is {}{}",
            state_name(rollout.state),
            rollout
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        )));
    }
    let actor = principal.actor();
    let pushed = match operation {
        Operation::Pause | Operation::Resume => {
            let (from, to, action) = match operation {
                Operation::Pause => (
                    RolloutState::Running,
                    RolloutState::Paused,
                    "rollout_paused",
                ),
                _ => (
                    RolloutState::Paused,
                    RolloutState::Running,
                    "rollout_resumed",
                ),
            };
            if rollout.state != from {
                return Err(ApiError::conflict(format!(
                    "rollout `{id}` is {}, not {}",
                    state_name(rollout.state),
                    state_name(from)
                )));
            }
            let read = rollout.clone();
            rollout.state = to;
            rollout.updated_ms = clock::now_ms();
            store
                .move_rollout(read, rollout.clone(), entry(&rollout, &actor, action, None))
                .await?
                .seq
        }
        Operation::Advance => {
            stored_version(store, &rollout, rollout.version).await?;
            advance(store, &mut rollout, &actor).await?
        }
        Operation::Abort => {
            stored_version(store, &rollout, rollout.previous).await?;
            roll_back(
                store,
                &mut rollout,
                RolloutState::Aborted,
                format!("aborted by {actor}"),
                &actor,
            )
            .await?
        }
    };
    drop(decisions);
    publisher.push(store, &rollout.org_id, pushed).await;
    publisher.changed(&rollout.org_id, CHANGED);
    view_of(store, rollout).await
}

/// Evaluates the gate of every org's running or paused rollout (the timer's round); an org
/// whose evaluation fails is logged and the others go on.
pub async fn check_all_gates(
    store: &dyn Store,
    publisher: &Publisher,
) -> Result<(), crate::store::StoreError> {
    for org in store.orgs().await? {
        if let Err(error) = check_gate(store, publisher, &org).await {
            tracing::warn!(org = org.as_str(), %error, "cannot evaluate the rollout gate");
        }
    }
    Ok(())
}

/// Evaluates the gate of `org`'s running or paused rollout: a failed gate rolls it back; a
/// running stage whose agents all applied the version and whose soak has passed advances.
pub async fn check_gate(
    store: &dyn Store,
    publisher: &Publisher,
    org: &str,
) -> Result<(), ApiError> {
    let Some(rollout) = store.latest_rollout(org.to_owned()).await? else {
        return Ok(());
    };
    if !rollout.state.is_active() {
        return Ok(());
    }
    let decisions = publisher.rollout_lock().await;
    // Read again under the lock: an operator may have acted meanwhile.
    let Some(mut rollout) = store.latest_rollout(org.to_owned()).await? else {
        return Ok(());
    };
    let latest = store.latest_policy(org.to_owned()).await?;
    if !rollout.state.is_active() || latest.map(|p| p.version) != Some(rollout.version) {
        return Ok(());
    }
    let agents = store.agents(org.to_owned()).await?;
    let moved = match evaluate(&rollout, &agents, clock::now_ms()) {
        Verdict::Hold => return Ok(()),
        Verdict::Advance => {
            stored_version(store, &rollout, rollout.version).await?;
            advance(store, &mut rollout, "server").await
        }
        Verdict::Fail(reason) => {
            stored_version(store, &rollout, rollout.previous).await?;
            tracing::warn!(rollout = %rollout.id, %reason, "rollout gate failed; rolling back");
            roll_back(
                store,
                &mut rollout,
                RolloutState::RolledBack,
                reason,
                "server",
            )
            .await
        }
    };
    let pushed = match moved {
        Ok(pushed) => pushed,
        // Another replica's gate (or an operator) decided first; its change is pushed here too.
        Err(StoreError::RolloutMoved { id }) => {
            tracing::debug!(rollout = %id, "the rollout was moved meanwhile");
            return Ok(());
        }
        Err(other) => return Err(other.into()),
    };
    drop(decisions);
    let delivery = publisher.push(store, org, pushed).await;
    tracing::info!(rollout = %rollout.id, state = state_name(rollout.state), pushed = delivery.queued, "rollout moved");
    publisher.changed(org, CHANGED);
    Ok(())
}

/// What the gate says about a rollout's stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Keep the stage.
    Hold,
    /// Go to the next stage.
    Advance,
    /// Roll back, for this reason.
    Fail(String),
}

/// The gate of `rollout`'s stage in force over `agents` (the org's) at `now_ms`: more failed
/// acks (refused or invalid) of the version than `maxFailures`, more silent agents than
/// `maxSilent` (no heartbeat for `silentAfterSecs`, counted once the stage is that old), or a
/// rate criterion ([`health::judge_rates`]: condition errors, actions versus the previous
/// version) fail it; a running stage advances when every agent in it acked the version as
/// applied, the rate criteria were judged and its soak time has passed.
pub fn evaluate(rollout: &Rollout, agents: &[AgentRecord], now_ms: i64) -> Verdict {
    let stage: Vec<&AgentRecord> = agents
        .iter()
        .filter(|a| in_stage(rollout, rollout.stage, &a.id))
        .collect();
    let failures: Vec<String> = stage
        .iter()
        .filter_map(|a| {
            let ack = a.ack.as_ref().filter(|k| k.version == rollout.version)?;
            (ack.status != AckStatus::Applied).then(|| {
                format!(
                    "`{}` {} it: {}",
                    a.id,
                    ack.status.as_str(),
                    ack.error.as_deref().unwrap_or("no reason given")
                )
            })
        })
        .collect();
    let stage_no = rollout.stage + 1;
    if failures.len() > usize::try_from(rollout.gate.max_failures).unwrap_or(usize::MAX) {
        return Verdict::Fail(format!(
            "{} agent(s) of stage {stage_no} did not apply {}: {}",
            failures.len(),
            rollout.version,
            failures.join("; ")
        ));
    }
    let silent_ms =
        i64::try_from(rollout.gate.silent_after_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    if now_ms.saturating_sub(rollout.stage_started_ms) >= silent_ms {
        let silent: Vec<&str> = stage
            .iter()
            .filter(|a| {
                a.last_seen
                    .is_none_or(|t| now_ms.saturating_sub(t.timestamp_millis()) >= silent_ms)
            })
            .map(|a| a.id.as_str())
            .collect();
        if silent.len() > usize::try_from(rollout.gate.max_silent).unwrap_or(usize::MAX) {
            return Verdict::Fail(format!(
                "{} agent(s) of stage {stage_no} silent for {} s or more: {}",
                silent.len(),
                rollout.gate.silent_after_secs,
                silent.join(", ")
            ));
        }
    }
    let rates_judged = match health::judge_rates(rollout, agents, &stage) {
        Ok(judged) => judged,
        Err(reason) => return Verdict::Fail(reason),
    };
    let all_applied = stage.iter().all(|a| {
        a.ack
            .as_ref()
            .is_some_and(|k| k.version == rollout.version && k.status == AckStatus::Applied)
    });
    let soak_ms = rollout.stages.get(rollout.stage).map_or(0, |s| {
        i64::try_from(s.soak_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    });
    if rollout.state == RolloutState::Running
        && all_applied
        && rates_judged
        && now_ms.saturating_sub(rollout.stage_started_ms) >= soak_ms
    {
        Verdict::Advance
    } else {
        Verdict::Hold
    }
}

/// Moves `rollout` to its next stage (or completes it) and stores it; its change gives the
/// agents now in the stage the version ([`assign`]) on every replica. Returns that change.
async fn advance(
    store: &dyn Store,
    rollout: &mut Rollout,
    actor: &str,
) -> Result<Option<u64>, StoreError> {
    let read = rollout.clone();
    let next = rollout.stage + 1;
    let action = if next >= rollout.stages.len() {
        rollout.state = RolloutState::Completed;
        "rollout_completed"
    } else {
        rollout.stage = next;
        rollout.stage_started_ms = clock::now_ms();
        "rollout_advanced"
    };
    rollout.updated_ms = clock::now_ms();
    Ok(store
        .move_rollout(read, rollout.clone(), entry(rollout, actor, action, None))
        .await?
        .seq)
}

/// Ends `rollout` in `state` (rolled back or aborted) and stores it; its change sends the
/// stage's agents the previous version with `rollbackFrom` on every replica. Returns that
/// change.
async fn roll_back(
    store: &dyn Store,
    rollout: &mut Rollout,
    state: RolloutState,
    reason: String,
    actor: &str,
) -> Result<Option<u64>, StoreError> {
    let read = rollout.clone();
    rollout.state = state;
    rollout.reason = Some(reason);
    rollout.updated_ms = clock::now_ms();
    let action = match state {
        RolloutState::Aborted => "rollout_aborted",
        _ => "rollout_rolled_back",
    };
    Ok(store
        .move_rollout(read, rollout.clone(), entry(rollout, actor, action, None))
        .await?
        .seq)
}

/// Checks that `version` of `rollout`'s org is stored (500 when it is not: the rollout cannot
/// move to it).
async fn stored_version(
    store: &dyn Store,
    rollout: &Rollout,
    version: PolicyVersion,
) -> Result<StoredPolicy, ApiError> {
    store
        .policy(rollout.org_id.clone(), version)
        .await?
        .ok_or_else(|| {
            ApiError::internal(format!(
                "{version} of org `{}` (rollout `{}`) is missing",
                rollout.org_id, rollout.id
            ))
        })
}

/// Rollout `id` if `principal` may see it; a named `org` (`?org_id=`, as the console sends
/// for the org it shows) must be the rollout's, else it is not found there.
async fn visible(
    store: &dyn Store,
    principal: &Principal,
    org: Option<&str>,
    id: &str,
) -> Result<Rollout, ApiError> {
    let rollout = store
        .rollout(id.to_owned())
        .await?
        .filter(|r| org.is_none_or(|org| r.org_id == org))
        .ok_or_else(|| ApiError::not_found(format!("unknown rollout `{id}`")))?;
    principal.check_org(&rollout.org_id)?;
    Ok(rollout)
}

async fn view_of(store: &dyn Store, rollout: Rollout) -> Result<RolloutView, ApiError> {
    let latest = store
        .latest_policy(rollout.org_id.clone())
        .await?
        .map(|p| p.version)
        .unwrap_or_default();
    let agents = store
        .agents(rollout.org_id.clone())
        .await?
        .into_iter()
        .map(|a| RolloutAgent {
            in_stage: in_stage(&rollout, rollout.stage, &a.id),
            assigned_version: assign(Some(&rollout), latest, &a.id).version,
            policy_version: a.policy_version,
            ack: a
                .ack
                .as_ref()
                .filter(|k| k.version == rollout.version)
                .map(|k| k.status),
            agent_id: a.id,
        })
        .collect();
    Ok(RolloutView { rollout, agents })
}

fn entry(rollout: &Rollout, actor: &str, action: &str, extra: Option<Value>) -> NewEntry {
    let mut detail = serde_json::json!({
        "rolloutId": rollout.id,
        "state": state_name(rollout.state),
        "stage": rollout.stage + 1,
        "stages": rollout.stages.len(),
        "previousVersion": rollout.previous,
        "reason": rollout.reason,
    });
    if let (Some(Value::Object(more)), Some(map)) = (extra, detail.as_object_mut()) {
        map.extend(more);
    }
    NewEntry {
        org_id: rollout.org_id.clone(),
        actor: actor.to_owned(),
        policy_version: Some(rollout.version),
        action: action.to_owned(),
        outcome: state_name(rollout.state).to_owned(),
        detail: Some(detail),
        ..NewEntry::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::assignment::{assign, in_stage};

    #[test]
    fn buckets_are_stable_and_stages_only_grow() {
        assert_eq!(bucket("agent-a"), bucket("agent-a"));
        let rollout = Rollout {
            id: "ro_1".into(),
            org_id: "default".into(),
            version: PolicyVersion::new(2),
            previous: PolicyVersion::new(1),
            state: RolloutState::Running,
            stage: 0,
            stages: vec![
                RolloutStage {
                    percent: 10,
                    agents: vec!["named".into()],
                    soak_secs: 0,
                },
                RolloutStage {
                    percent: 50,
                    agents: vec![],
                    soak_secs: 0,
                },
            ],
            gate: RolloutGate::default(),
            stage_started_ms: 0,
            created_ms: 0,
            updated_ms: 0,
            reason: None,
        };
        let ids: Vec<String> = (0..2000).map(|i| format!("agent-{i}")).collect();
        let first: Vec<&String> = ids.iter().filter(|a| in_stage(&rollout, 0, a)).collect();
        let second: Vec<&String> = ids.iter().filter(|a| in_stage(&rollout, 1, a)).collect();
        assert!(first.iter().all(|a| second.contains(a)));
        assert!((150..250).contains(&first.len()), "{}", first.len());
        assert!((900..1100).contains(&second.len()), "{}", second.len());
        assert!(in_stage(&rollout, 0, "named"));
        let outside = ids.iter().find(|a| !in_stage(&rollout, 1, a)).unwrap();
        assert_eq!(
            assign(Some(&rollout), PolicyVersion::new(2), outside).version,
            PolicyVersion::new(1)
        );
        assert_eq!(
            assign(Some(&rollout), PolicyVersion::new(3), outside).version,
            PolicyVersion::new(3),
            "a rollout decides only while its version is the latest"
        );
    }
}
