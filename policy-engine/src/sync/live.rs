//! The running engine shared by the event loop and the sync task, swapped atomically on update.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::shadow::Shadows;
use super::{ApplyError, PolicyUpdate, StoredPolicy};
use crate::engine::{Diagnostic, Engine, EngineConfig, Evaluation};
use crate::event::ThreatEvent;
use crate::policy::{Budgets, Policy, PolicyVersion};
use crate::protocol::{AckStatus, ShadowEvent, ShadowReport, VersionAck};
use crate::signing::{KeyRing, SignatureError};

/// What the agent's sync side knows, published on every change (see [`LiveEngine::subscribe`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStatus {
    /// Version of the policy the engine runs; `None` before any policy arrived.
    pub applied: Option<PolicyVersion>,
    /// The last refusal or failure, reported in heartbeats until a policy is applied again.
    pub last_error: Option<String>,
    /// Whether the event stream is open.
    pub connected: bool,
    /// When the server last answered (stream event or heartbeat).
    pub last_contact: Option<Instant>,
    /// This agent's id: given, or learned from the server (`GET /api/agents/me`); heartbeats
    /// and reports wait for it.
    pub agent_id: Option<String>,
    /// A standing condition reported with every heartbeat (after `last_error`) while it lasts,
    /// e.g. action reports dropped from a full outbox; unlike `last_error` an applied policy
    /// does not clear it.
    pub warning: Option<String>,
    /// What became of the last version offered (applied, refused, invalid), without action
    /// counts; [`LiveEngine::ack`] adds them.
    pub ack: Option<VersionAck>,
}

impl SyncStatus {
    /// What the next heartbeat says as `lastError`: the last error and the warning.
    ///
    /// ```
    /// use policy_engine::sync::SyncStatus;
    /// let status = SyncStatus {
    ///     last_error: Some("policy v2 refused: ...".into()),
    ///     warning: Some("outbox: 3 action reports dropped".into()),
    ///     ..SyncStatus::default()
    /// };
    /// assert_eq!(status.heartbeat_error().as_deref(), Some("policy v2 refused: ...; outbox: 3 action reports dropped"));
    /// assert_eq!(SyncStatus::default().heartbeat_error(), None);
    /// ```
    pub fn heartbeat_error(&self) -> Option<String> {
        match (&self.last_error, &self.warning) {
            (Some(error), Some(warning)) => Some(format!("{error}; {warning}")),
            (Some(text), None) | (None, Some(text)) => Some(text.clone()),
            (None, None) => None,
        }
    }
}

/// A pushed policy that [`LiveEngine::check_update`] accepted and that is not running yet:
/// what the sync task saves to the state dir before [`LiveEngine::apply_checked`] runs it, so
/// that whatever the agent runs, acts on and reports is on disk first.
#[derive(Debug)]
pub struct Checked {
    stored: StoredPolicy,
    rollback_from: Option<PolicyVersion>,
}

impl Checked {
    /// The policy to run, with its version and signature (what the state dir keeps).
    pub fn policy(&self) -> &StoredPolicy {
        &self.stored
    }
}

/// What [`LiveEngine::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The policy is now running; it replaced `previous` (if any), keeping the state of the
    /// rules the two have in common.
    Swapped {
        /// The version that ran before.
        previous: Option<PolicyVersion>,
    },
    /// The same version with the same rules is already running (a reconnect re-sends it).
    Unchanged,
}

/// The engine of a running agent, shared between the thread that feeds it events and the task
/// that receives policies.
///
/// Cloning is cheap and gives another handle to the same engine. The engine sits behind a mutex
/// that [`LiveEngine::process`] holds for one event (or [`LiveEngine::with_engine`] for a batch)
/// and [`LiveEngine::apply`] holds only for the swap itself: a policy is validated and its
/// conditions compiled before the lock is taken, so an event sees either the old policy or the
/// new one, never a mix, and never waits for a compile.
///
/// ```
/// use chrono::Utc;
/// use policy_engine::engine::EngineConfig;
/// use policy_engine::sync::{Applied, LiveEngine};
/// use policy_engine::{Policy, PolicyVersion, ThreatEvent};
/// let live = LiveEngine::new(EngineConfig::default());
/// let event = ThreatEvent::from_json(br#"{"type":"malware","pid":4242,"confidence":0.9}"#).unwrap();
/// assert!(live.process(&event, Utc::now()).actions.is_empty());
/// let policy = Policy::from_json(br#"{"name":"p","rules":[{"type":"auto_respond","config":
///     {"trigger":"malware","action":"kill_process","minConfidence":0.8}}]}"#).unwrap();
/// assert_eq!(live.apply(PolicyVersion::new(1), policy.clone()).unwrap(), Applied::Swapped { previous: None });
/// assert_eq!(live.process(&event, Utc::now()).actions.len(), 1);
/// let refused = live.apply(PolicyVersion::new(0), policy).unwrap_err();
/// assert_eq!(refused.to_string(), "policy v0 refused: older than the applied v1");
/// ```
#[derive(Debug, Clone)]
pub struct LiveEngine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: Mutex<Option<Engine>>,
    /// The policy running, kept apart from the engine so that version checks and persistence
    /// never take the hot lock.
    applied: Mutex<Option<StoredPolicy>>,
    config: EngineConfig,
    signatures: Option<SignatureCheck>,
    status: watch::Sender<SyncStatus>,
    /// Actions emitted since the running policy was applied, by action name.
    counts: Mutex<BTreeMap<&'static str, u64>>,
    /// Events evaluated since the running policy was applied.
    events: AtomicU64,
    /// Of those, events on which at least one condition failed.
    condition_errors: AtomicU64,
    /// The running policy's action budgets, apart so that the dispatcher reads them cheaply.
    budgets: Mutex<Budgets>,
    /// The shadow run and the per-rule tallies; locked only while something runs in shadow.
    shadows: Mutex<Shadows>,
    /// Whether something runs in shadow (a shadow run, or a rule in shadow mode).
    shadow_active: AtomicBool,
}

/// What an agent pinned to operator keys checks: the keys, and the org they must have signed
/// for (the agent's own, from its enrollment or its configuration, never from the server).
#[derive(Debug, Clone)]
pub struct SignatureCheck {
    /// The pinned public keys (two during a rotation).
    pub keys: KeyRing,
    /// The agent's org.
    pub org_id: String,
}

impl LiveEngine {
    /// An engine without a policy: it emits nothing until the first [`LiveEngine::apply`].
    pub fn new(config: EngineConfig) -> Self {
        Self::with_signatures(config, None)
    }

    /// An engine that, given `Some`, runs only policies signed by one of the pinned keys for
    /// its org (fail closed: unsigned, badly signed, other-org and older versions are refused
    /// and the running policy stays).
    pub fn with_signatures(config: EngineConfig, signatures: Option<SignatureCheck>) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine: Mutex::new(None),
                applied: Mutex::new(None),
                config,
                signatures,
                status: watch::Sender::new(SyncStatus::default()),
                counts: Mutex::new(BTreeMap::new()),
                events: AtomicU64::new(0),
                condition_errors: AtomicU64::new(0),
                budgets: Mutex::new(Budgets::default()),
                shadows: Mutex::new(Shadows::default()),
                shadow_active: AtomicBool::new(false),
            }),
        }
    }

    /// Runs one event through the current policy at time `now`.
    /// Counts it, whether a condition failed on it, and its actions for the version's ack.
    /// While something runs in shadow, the evaluation's actions and would-be actions are
    /// tallied per rule and the event then runs through the shadow run's engine (after the
    /// enforced engine's lock is released).
    pub fn process(&self, event: &ThreatEvent, now: DateTime<Utc>) -> Evaluation {
        let evaluation = match lock(&self.inner.engine).as_mut() {
            Some(engine) => {
                let evaluation = engine.process(event, now);
                self.inner.events.fetch_add(1, Ordering::Relaxed);
                if evaluation
                    .diagnostics
                    .iter()
                    .any(|d| matches!(d, Diagnostic::ConditionError { .. }))
                {
                    self.inner.condition_errors.fetch_add(1, Ordering::Relaxed);
                }
                evaluation
            }
            None => Evaluation::default(),
        };
        if self.inner.shadow_active.load(Ordering::Acquire) {
            lock(&self.inner.shadows).observe(&evaluation.actions, &evaluation.shadow, event, now);
        }
        if !evaluation.actions.is_empty() {
            let mut counts = lock(&self.inner.counts);
            for record in &evaluation.actions {
                *counts.entry(record.action.name()).or_default() += 1;
            }
        }
        evaluation
    }

    /// The ack of the last version offered, with the events [`LiveEngine::process`] evaluated,
    /// those on which a condition failed, and the actions it emitted since the running version
    /// was applied (for an applied one); `None` before any offer.
    ///
    /// ```
    /// use chrono::Utc;
    /// use policy_engine::engine::EngineConfig;
    /// use policy_engine::protocol::PolicyEvent;
    /// use policy_engine::sync::{LiveEngine, PolicyUpdate};
    /// use policy_engine::ThreatEvent;
    /// let live = LiveEngine::new(EngineConfig::default());
    /// let update = PolicyUpdate::from_event(r#"{"version": "v1", "name": "p", "rules": [
    ///     {"type": "custom", "config": {"condition": "pid > 10", "action": "kill_process"}}]}"#).unwrap();
    /// live.apply_update(&update).unwrap();
    /// for event in [r#"{"type": "x", "pid": 42}"#, r#"{"type": "x"}"#] {
    ///     live.process(&ThreatEvent::from_json(event.as_bytes()).unwrap(), Utc::now());
    /// }
    /// let ack = live.ack().unwrap();
    /// assert_eq!((ack.events, ack.condition_errors), (2, 1));
    /// assert_eq!(ack.actions["kill_process"], 1);
    /// ```
    pub fn ack(&self) -> Option<VersionAck> {
        let mut ack = self.inner.status.borrow().ack.clone()?;
        if ack.status == AckStatus::Applied {
            ack.actions = lock(&self.inner.counts)
                .iter()
                .map(|(name, count)| ((*name).to_owned(), *count))
                .collect();
            ack.events = self.inner.events.load(Ordering::Relaxed);
            ack.condition_errors = self
                .inner
                .condition_errors
                .load(Ordering::Relaxed)
                .min(ack.events);
        }
        Some(ack)
    }

    /// Runs `f` with the engine locked (`None` before the first policy), so that a batch of
    /// events pays for one lock and sees one policy. Keep batches short: a policy swap waits.
    pub fn with_engine<R>(&self, f: impl FnOnce(Option<&mut Engine>) -> R) -> R {
        f(lock(&self.inner.engine).as_mut())
    }

    /// The action budgets of the running policy (the defaults before the first policy).
    pub fn budgets(&self) -> Budgets {
        *lock(&self.inner.budgets)
    }

    /// Version of the running policy.
    pub fn version(&self) -> Option<PolicyVersion> {
        lock(&self.inner.applied).as_ref().map(|p| p.version)
    }

    /// The running policy and its version.
    pub fn applied(&self) -> Option<StoredPolicy> {
        lock(&self.inner.applied).clone()
    }

    /// Makes `policy` the running policy, unless it is older than the running one.
    ///
    /// A newer version, or the same version with different rules (the server re-resolves an
    /// agent's policy when its overrides change), is swapped in with
    /// [`Engine::update_policy`], which keeps the counters of unchanged rules.
    pub fn apply(&self, version: PolicyVersion, policy: Policy) -> Result<Applied, ApplyError> {
        self.install(
            StoredPolicy {
                version,
                policy,
                signature: None,
            },
            None,
        )
    }

    /// Makes a policy loaded from the state dir the running one (with its signature, whose
    /// rollout terms decide later rollbacks).
    pub fn restore(&self, stored: StoredPolicy) -> Result<Applied, ApplyError> {
        self.install(stored, None)
    }

    /// Validates a pushed policy and applies it; a refusal is recorded as the last error (for
    /// the next heartbeat) and returned. An agent pinned to signing keys
    /// ([`LiveEngine::with_signatures`]) runs only the signed rules, verified for its org and
    /// the event's version, with the rules its overrides disable switched off.
    pub fn apply_update(&self, update: &PolicyUpdate) -> Result<Applied, ApplyError> {
        match self.check_update(update)? {
            Some(checked) => self.apply_checked(checked),
            None => Ok(Applied::Unchanged),
        }
    }

    /// The first half of [`LiveEngine::apply_update`]: checks a pushed policy (its version
    /// against the running one, its signature for a pinned agent, its rules) without running
    /// it. `None` when exactly that policy is running already (a reconnect re-sends it); a
    /// refusal is recorded as in `apply_update`.
    pub fn check_update(&self, update: &PolicyUpdate) -> Result<Option<Checked>, ApplyError> {
        let stored = match self
            .check_version(update)
            .and_then(|()| self.verified(update))
        {
            Ok(stored) => stored,
            Err(err) => {
                self.settle(update.version, Err(&err));
                return Err(err);
            }
        };
        let running = lock(&self.inner.applied)
            .as_ref()
            .is_some_and(|c| c.version == stored.version && c.policy == stored.policy);
        if running {
            self.settle(update.version, Ok(Applied::Unchanged));
            return Ok(None);
        }
        Ok(Some(Checked {
            stored,
            rollback_from: update.rollback_from,
        }))
    }

    /// The second half of [`LiveEngine::apply_update`]: runs a checked policy (the version
    /// order is checked again, in case another policy was applied in between).
    pub fn apply_checked(&self, checked: Checked) -> Result<Applied, ApplyError> {
        let version = checked.stored.version;
        let result = self.install(checked.stored, checked.rollback_from);
        self.settle(version, result.as_ref().copied());
        result
    }

    /// Records what became of the offer of `version`: the ack, and a refusal as the last error.
    fn settle(&self, version: PolicyVersion, result: Result<Applied, &ApplyError>) {
        match result {
            Err(err) => {
                let status = match err {
                    ApplyError::Invalid { .. } => AckStatus::Invalid,
                    _ => AckStatus::Refused,
                };
                let error = err.to_string();
                self.record_error(error.clone());
                self.set_ack(version, status, Some(error));
            }
            Ok(Applied::Swapped { .. }) => self.set_ack(version, AckStatus::Applied, None),
            Ok(Applied::Unchanged) => {
                // A repeat (a reconnect): the running version's ack stands.
                let acked = self
                    .inner
                    .status
                    .borrow()
                    .ack
                    .as_ref()
                    .map(|a| (a.version, a.status));
                if acked != Some((version, AckStatus::Applied)) {
                    self.set_ack(version, AckStatus::Applied, None);
                }
            }
        }
    }

    /// The policy an update asks this agent to run, checked against its pinned keys if any.
    fn verified(&self, update: &PolicyUpdate) -> Result<StoredPolicy, ApplyError> {
        let version = update.version;
        let invalid = |error| ApplyError::Invalid { version, error };
        let Some(check) = &self.inner.signatures else {
            return Ok(StoredPolicy {
                version,
                policy: Policy::from_value(&update.document).map_err(invalid)?,
                signature: update.signed.as_ref().map(|s| s.signature.clone()),
            });
        };
        let Some(signed) = &update.signed else {
            return Err(SignatureError::Unsigned { version }.into());
        };
        let mut policy = Policy::from_value(&signed.document).map_err(invalid)?;
        check
            .keys
            .verify(&check.org_id, version, &policy, &signed.signature)?;
        let count = policy.rules.len();
        for &index in &signed.disabled_rules {
            let rule = policy.rules.get_mut(index).ok_or_else(|| {
                ApplyError::Malformed(format!(
                    "policy {version}: `disabledRules` names rule {index}, but the policy has {count} rules"
                ))
            })?;
            rule.enabled = false;
        }
        Ok(StoredPolicy {
            version,
            policy,
            signature: Some(signed.signature.clone()),
        })
    }

    /// Swaps `stored` in, unless it is older than the running policy; an older one only as the
    /// rollback of exactly the running version (`rollback_from`).
    fn install(
        &self,
        stored: StoredPolicy,
        rollback_from: Option<PolicyVersion>,
    ) -> Result<Applied, ApplyError> {
        let version = stored.version;
        let mut applied = lock(&self.inner.applied);
        let previous = applied.as_ref().map(|p| p.version);
        if let Some(current) = applied.as_ref() {
            if version < current.version && rollback_from != Some(current.version) {
                return Err(ApplyError::Older {
                    offered: version,
                    applied: current.version,
                });
            }
            if version == current.version && current.policy == stored.policy {
                return Ok(Applied::Unchanged);
            }
        }
        {
            let mut engine = lock(&self.inner.engine);
            match engine.as_mut() {
                Some(engine) => engine.update_policy(stored.policy.clone(), version),
                None => {
                    *engine = Some(Engine::new(
                        stored.policy.clone(),
                        version,
                        self.inner.config.clone(),
                    ));
                }
            }
        }
        *lock(&self.inner.budgets) = stored.policy.budgets;
        {
            let mut shadows = lock(&self.inner.shadows);
            shadows.enforced_changed(&stored.policy, Utc::now());
            self.inner
                .shadow_active
                .store(shadows.active(), Ordering::Release);
        }
        *applied = Some(stored);
        drop(applied);
        lock(&self.inner.counts).clear();
        self.inner.events.store(0, Ordering::Relaxed);
        self.inner.condition_errors.store(0, Ordering::Relaxed);
        self.inner.status.send_modify(|status| {
            status.applied = Some(version);
            status.last_error = None;
        });
        Ok(Applied::Swapped { previous })
    }

    /// Starts the shadow run of a `shadow` event: its document is validated (strictly, as a
    /// policy's) and evaluated beside the enforced policy from now on, replacing any shadow run
    /// before it; nothing it emits is executed. The same run again changes nothing.
    pub fn start_shadow(&self, event: ShadowEvent) -> Result<(), ApplyError> {
        let shadow = event.shadow;
        let policy = Policy::from_value(&event.into_document()).map_err(|error| {
            ApplyError::Malformed(format!("shadow run {shadow} refused: {error}"))
        })?;
        let mut shadows = lock(&self.inner.shadows);
        if shadows.running() != Some(shadow) {
            shadows.start(shadow, policy, self.inner.config.clone(), Utc::now());
        }
        self.inner
            .shadow_active
            .store(shadows.active(), Ordering::Release);
        Ok(())
    }

    /// Ends shadow run `shadow`; false when it is not the one running.
    pub fn end_shadow(&self, shadow: u64) -> bool {
        let mut shadows = lock(&self.inner.shadows);
        let ended = shadows.end(shadow, Utc::now());
        self.inner
            .shadow_active
            .store(shadows.active(), Ordering::Release);
        ended
    }

    /// The shadow run's number, if one runs.
    pub fn shadow_run(&self) -> Option<u64> {
        lock(&self.inner.shadows).running()
    }

    /// What runs in shadow counted since its start (see [`ShadowReport`]); `None` when nothing
    /// runs in shadow or no policy is applied.
    pub fn shadow_report(&self) -> Option<ShadowReport> {
        let version = self.version();
        lock(&self.inner.shadows).report(version)
    }

    fn set_ack(&self, version: PolicyVersion, status: AckStatus, error: Option<String>) {
        let ack = VersionAck {
            version,
            status,
            error,
            at: Utc::now(),
            actions: BTreeMap::new(),
            events: 0,
            condition_errors: 0,
        };
        self.inner
            .status
            .send_modify(|status| status.ack = Some(ack));
    }

    /// Remembers `message` as the last error, to be reported in the next heartbeat.
    pub fn record_error(&self, message: String) {
        self.inner
            .status
            .send_modify(|status| status.last_error = Some(message));
    }

    /// The current status.
    pub fn status(&self) -> SyncStatus {
        self.inner.status.borrow().clone()
    }

    /// A receiver that sees every status change (applied version, last error, connection).
    pub fn subscribe(&self) -> watch::Receiver<SyncStatus> {
        self.inner.status.subscribe()
    }

    pub(crate) fn update_status(&self, f: impl FnOnce(&mut SyncStatus)) {
        self.inner.status.send_modify(f);
    }

    /// Refuses an older version than the running one, except the rollback of exactly the
    /// running version; an agent pinned to keys also needs the running version's signature to
    /// name the offered one as its fallback, and reads any other older version as a replay.
    fn check_version(&self, update: &PolicyUpdate) -> Result<(), ApplyError> {
        let offered = update.version;
        let applied = lock(&self.inner.applied);
        let Some(current) = applied.as_ref().filter(|c| offered < c.version) else {
            return Ok(());
        };
        let pinned = self.inner.signatures.is_some();
        if update.rollback_from != Some(current.version) {
            return Err(if pinned {
                SignatureError::Downgrade {
                    offered,
                    applied: current.version,
                }
                .into()
            } else {
                ApplyError::Older {
                    offered,
                    applied: current.version,
                }
            });
        }
        if pinned {
            let fallback = current
                .signature
                .as_ref()
                .and_then(|s| s.rollout.as_ref())
                .and_then(|terms| terms.fallback);
            if fallback != Some(offered) {
                return Err(SignatureError::RollbackNotAllowed {
                    offered,
                    applied: current.version,
                    allowed: match fallback {
                        Some(v) => format!("its fallback is {v}"),
                        None => "it names no fallback".to_owned(),
                    },
                }
                .into());
            }
        }
        Ok(())
    }
}

/// Locks `mutex`, recovering the data if a thread panicked while holding it: the engine and the
/// applied policy are replaced whole, never left half-written, so the data is still sound.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
