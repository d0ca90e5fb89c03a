//! The agent's Prometheus metrics: what its event path, executor, engine, sync and outbox
//! did, as [`AgentMetrics`], for the reference agent's `--metrics-listen` and for embedders
//! (their own registry, or the text, or the same listener).
//!
//! Counted as it happens: event lines read, events, lines skipped, engine evaluation time,
//! matches per rule, actions by type, outcome and origin. Read at each scrape: the engine's
//! [`stats`](crate::Engine::stats) (tracked keys, evictions, condition errors, missing targets,
//! invalid params), the sync state (connected, applied version, last error, time since the
//! server last answered) and the outbox (reports waiting, reports dropped).

mod listener;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use listener::MetricsServer;

use super::outbox::Outbox;
use super::report::Origin;
use crate::action::ActionRecord;
use crate::executor::Outcome;
use crate::policy::{OnExceed, ResponseAction};
use crate::sync::LiveEngine;

/// Content type of [`AgentMetrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Longest `message` label of `policy_agent_sync_last_error`, in characters.
const MAX_ERROR_LABEL_CHARS: usize = 200;

/// `action`, `outcome` and `origin` of `policy_agent_actions_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ActionLabels {
    action: &'static str,
    outcome: &'static str,
    origin: &'static str,
}

/// `action` and `on_exceed` of `policy_agent_budget_exceeded_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    action: &'static str,
    on_exceed: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: u64,
}

/// The metrics of one agent. Cheap to clone (every clone counts into the same figures).
///
/// An [`Agent`](super::Agent) makes one unless given one with
/// [`AgentBuilder::metrics`](super::AgentBuilder::metrics); read it from
/// [`AgentHandle::metrics`](super::AgentHandle::metrics), serve it with
/// [`AgentBuilder::metrics_listen`](super::AgentBuilder::metrics_listen), or register it into
/// your own registry:
///
/// ```
/// use policy_engine::agent::AgentMetrics;
/// use prometheus_client::registry::Registry;
/// let metrics = AgentMetrics::new();
/// let mut registry = Registry::default();
/// metrics.register(registry.sub_registry_with_prefix("policy_agent"));
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains("policy_agent_events_total 0"));
/// assert!(metrics.encode().contains("policy_agent_events_total 0"));
/// ```
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    families: Families,
}

/// The families, cloned into every registry they are registered in.
#[derive(Debug, Clone)]
struct Families {
    lines: Counter,
    events: Counter,
    skipped: Counter,
    evaluation: Histogram,
    matches: Family<RuleLabels, Counter>,
    actions: Family<ActionLabels, Counter>,
    over_budget: Family<BudgetLabels, Counter>,
    state: Arc<State>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    /// Every figure at zero; the engine, sync and outbox figures appear once an agent runs
    /// with these metrics.
    pub fn new() -> Self {
        let families = Families {
            lines: Counter::default(),
            events: Counter::default(),
            skipped: Counter::default(),
            // 1 µs to about 33 ms.
            evaluation: Histogram::new(exponential_buckets(0.000_001, 2.0, 16)),
            matches: Family::default(),
            actions: Family::default(),
            over_budget: Family::default(),
            state: Arc::new(State::default()),
        };
        let mut registry = Registry::default();
        families
            .clone()
            .register(registry.sub_registry_with_prefix("policy_agent"));
        Self {
            inner: Arc::new(Inner { registry, families }),
        }
    }

    /// Registers every figure into `registry` too (under its prefix: give it a sub-registry
    /// with the prefix `policy_agent` to keep the names this crate documents).
    pub fn register(&self, registry: &mut Registry) {
        self.inner.families.clone().register(registry);
    }

    /// Every figure as OpenMetrics text (what `GET /metrics` answers).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.inner.registry);
        text
    }

    /// Serves [`AgentMetrics::encode`] at `http://addr/metrics` until the returned server is
    /// dropped.
    pub async fn serve(&self, addr: std::net::SocketAddr) -> std::io::Result<MetricsServer> {
        MetricsServer::start(addr, self.clone()).await
    }

    /// One line read by an event source (blank ones included).
    pub(crate) fn line(&self) {
        self.inner.families.lines.inc();
    }

    /// One line skipped: not a valid event.
    pub(crate) fn skipped(&self) {
        self.inner.families.skipped.inc();
    }

    /// One event run through the engine in `elapsed`, with the actions it produced.
    pub(crate) fn evaluated(&self, elapsed: Duration, actions: &[ActionRecord]) {
        let families = &self.inner.families;
        families.events.inc();
        families.evaluation.observe(elapsed.as_secs_f64());
        for record in actions {
            families
                .matches
                .get_or_create(&RuleLabels {
                    rule: record.rule as u64,
                })
                .inc();
        }
    }

    /// The labels of one action carried out (or not) with `outcome`, to count with
    /// [`AgentMetrics::action`] once it is reported.
    pub(crate) fn action_labels(
        record: &ActionRecord,
        outcome: &Outcome,
        origin: &Origin,
    ) -> ActionLabels {
        ActionLabels {
            action: record.action.name(),
            outcome: match outcome {
                Outcome::Done { .. } => "done",
                Outcome::Skipped { .. } => "skipped",
                Outcome::Failed { .. } => "failed",
            },
            origin: match origin {
                Origin::Local => "local",
                Origin::Fleet => "fleet",
                Origin::Approval(_) => "approval",
                Origin::OverBudget(_) => "budget",
            },
        }
    }

    /// One engine action beyond its budget, turned into an approval request or dropped.
    pub(crate) fn over_budget(&self, action: ResponseAction, on_exceed: OnExceed) {
        self.inner
            .families
            .over_budget
            .get_or_create(&BudgetLabels {
                action: action.as_str(),
                on_exceed: on_exceed.as_str(),
            })
            .inc();
    }

    /// One action carried out (or not), by its [`AgentMetrics::action_labels`].
    pub(crate) fn action(&self, labels: &ActionLabels) {
        self.inner.families.actions.get_or_create(labels).inc();
    }

    /// The running agent whose engine, sync state and outbox the scrapes read.
    pub(crate) fn attach(&self, live: LiveEngine, outbox: Arc<Outbox>) {
        let mut attached = self
            .inner
            .families
            .state
            .attached
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *attached = Some((live, outbox));
    }
}

impl Families {
    fn register(self, registry: &mut Registry) {
        registry.register(
            "event_lines",
            "Lines read by the event sources (blank ones included)",
            self.lines,
        );
        registry.register("events", "Events run through the engine", self.events);
        registry.register(
            "event_lines_skipped",
            "Lines skipped because they are not valid events",
            self.skipped,
        );
        registry.register(
            "engine_evaluation_duration_seconds",
            "Time the engine took for one event (every rule)",
            self.evaluation,
        );
        registry.register(
            "rule_matches",
            "Actions each rule emitted, by rule index in the running policy",
            self.matches,
        );
        registry.register(
            "actions",
            "Actions carried out, by type, outcome (`done`, `skipped`, `failed`) and origin (`local`, `fleet`, `approval`, `budget`)",
            self.actions,
        );
        registry.register(
            "budget_exceeded",
            "Engine actions beyond the host's budget, by action and what became of them (`approval`, `drop`)",
            self.over_budget,
        );
        registry.register_collector(Box::new(self.state));
    }
}

/// What the scrape reads from the running agent.
#[derive(Debug, Default)]
struct State {
    attached: Mutex<Option<(LiveEngine, Arc<Outbox>)>>,
}

impl Collector for State {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let attached = self
            .attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some((live, outbox)) = attached else {
            return Ok(());
        };
        let stats = live.with_engine(|engine| engine.map(|e| e.stats().clone()));
        let stats = stats.unwrap_or_default();
        let counters = [
            (
                "engine_evictions",
                "Tracked keys evicted at the per-rule cap",
                stats.evictions,
            ),
            (
                "engine_condition_errors",
                "Custom conditions that failed on an event (and counted as false)",
                stats.condition_errors,
            ),
            (
                "engine_missing_targets",
                "Actions not emitted because the event lacked their target",
                stats.missing_targets,
            ),
            (
                "engine_invalid_params",
                "Custom actions not emitted because of invalid params",
                stats.invalid_params,
            ),
            (
                "outbox_dropped_reports",
                "Reports dropped from a full outbox",
                outbox.dropped().count,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let status = live.status();
        let mut gauges = vec![
            (
                "engine_tracked_keys",
                "Keys (source addresses) the engine tracks now, over all rules",
                to_i64(stats.tracked_keys),
            ),
            (
                "sync_connected",
                "1 while the event stream to the server is open",
                i64::from(status.connected),
            ),
            (
                "outbox_reports",
                "Reports waiting in the outbox for the server",
                to_i64(outbox.len() as u64),
            ),
        ];
        if let Some(version) = status.applied {
            gauges.push((
                "policy_version",
                "Number of the policy version the engine runs",
                to_i64(version.number()),
            ));
        }
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        if let Some(contact) = status.last_contact {
            let gauge = ConstGauge::new(contact.elapsed().as_secs_f64());
            gauge.encode(encoder.encode_descriptor(
                "sync_seconds_since_contact",
                "Seconds since the server last answered (stream event or heartbeat)",
                None,
                gauge.metric_type(),
            )?)?;
        }
        if let Some(error) = status.heartbeat_error() {
            let gauge = ConstGauge::new(1i64);
            let message: String = error.chars().take(MAX_ERROR_LABEL_CHARS).collect();
            let mut family = encoder.encode_descriptor(
                "sync_last_error",
                "1 with the agent's last error (a refused policy, a sync failure, dropped reports) as `message`, while it stands",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(family.encode_family(&[("message", message)])?)?;
        }
        Ok(())
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
