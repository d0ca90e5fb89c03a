//! The server's Prometheus metrics: one [`ServerMetrics`] per server, updated by the layers
//! that see each figure (requests by the HTTP layer, connections by the listener, fan-out time
//! by the publisher, deliveries by the notifier, database latency by the metered store) and
//! the fleet's gauges refreshed at each scrape. Served in the OpenMetrics text format on the
//! `--metrics-listen` address.
//!
//! This module is the bottom layer: it imports nothing from the crate, so every layer may
//! record into it.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Content type of [`ServerMetrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `method`, `route` (the OpenAPI path template, `unmatched` for unknown paths) and `status`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrgLabels {
    org: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApprovalLabels {
    org: String,
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    event: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    channel: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

/// A histogram of latencies from 100 µs to about 3.3 s.
fn fast_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// A histogram of request latencies from 1 ms to about 33 s.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// What the fleet's gauges show of one org at a scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrgGauges {
    /// The org.
    pub org: String,
    /// Enrolled agents.
    pub agents: u64,
    /// Agents with an open stream or a recent heartbeat.
    pub online: u64,
    /// Agents whose last reported version is not the org's latest.
    pub outdated: u64,
    /// The number of the org's latest policy version, if it has one.
    pub policy_version: Option<u64>,
    /// Open event streams.
    pub streams: u64,
    /// Approval requests by status (every status, zeros included).
    pub approvals: Vec<(&'static str, u64)>,
}

/// Every metric of one server.
#[derive(Debug)]
pub struct ServerMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    connections_open: Gauge,
    connections_accepted: Counter,
    broadcast_seconds: Family<EventLabels, Histogram, fn() -> Histogram>,
    broadcast_deliveries: Family<DeliveryLabels, Counter>,
    notifications: Family<NotificationLabels, Counter>,
    db_seconds: Family<OperationLabels, Histogram, fn() -> Histogram>,
    db_errors: Family<OperationLabels, Counter>,
    agents: Family<OrgLabels, Gauge>,
    agents_online: Family<OrgLabels, Gauge>,
    agents_outdated: Family<OrgLabels, Gauge>,
    policy_version: Family<OrgLabels, Gauge>,
    streams_open: Family<OrgLabels, Gauge>,
    approvals: Family<ApprovalLabels, Gauge>,
    /// Held while the fleet gauges are replaced and the registry encoded, so that two scrapes
    /// never interleave a clear and an encode.
    scrape: Mutex<()>,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerMetrics {
    /// Every metric at zero, registered under the `policy_server_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("policy_server");
        let metrics = Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(request_histogram),
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            broadcast_seconds: Family::new_with_constructor(fast_histogram),
            broadcast_deliveries: Family::default(),
            notifications: Family::default(),
            db_seconds: Family::new_with_constructor(fast_histogram),
            db_errors: Family::default(),
            agents: Family::default(),
            agents_online: Family::default(),
            agents_outdated: Family::default(),
            policy_version: Family::default(),
            streams_open: Family::default(),
            approvals: Family::default(),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "API requests answered, by method, route (the OpenAPI path template) and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request to its answer's head (for the event stream: to the stream's start)",
            metrics.request_seconds.clone(),
        );
        registry.register(
            "connections_open",
            "Connections being served",
            metrics.connections_open.clone(),
        );
        registry.register(
            "connections_accepted",
            "Connections accepted",
            metrics.connections_accepted.clone(),
        );
        registry.register(
            "sse_streams_open",
            "Open agent event streams, by org",
            metrics.streams_open.clone(),
        );
        registry.register("agents", "Enrolled agents, by org", metrics.agents.clone());
        registry.register(
            "agents_online",
            "Agents with an open event stream or a heartbeat within the online window, by org",
            metrics.agents_online.clone(),
        );
        registry.register(
            "agents_outdated",
            "Agents whose last reported policy version is not the one they are assigned (their org's latest, or what a rollout decides), by org",
            metrics.agents_outdated.clone(),
        );
        registry.register(
            "policy_version",
            "Number of the latest policy version, by org",
            metrics.policy_version.clone(),
        );
        registry.register(
            "broadcast_duration_seconds",
            "Time to queue one change to every stream it goes to, by event",
            metrics.broadcast_seconds.clone(),
        );
        registry.register(
            "broadcast_deliveries",
            "Streams a change was queued to (`queued`) or that were dropped as too slow (`dropped`), by event",
            metrics.broadcast_deliveries.clone(),
        );
        registry.register(
            "notifications",
            "Alert deliveries, by channel and outcome (`delivered`, `failed`, `unknown_channel`, `not_configured`, `corrupt`)",
            metrics.notifications.clone(),
        );
        registry.register(
            "approvals",
            "Approval requests, by org and status",
            metrics.approvals.clone(),
        );
        registry.register(
            "db_operation_duration_seconds",
            "Time of a store operation (queueing included), by operation",
            metrics.db_seconds.clone(),
        );
        registry.register(
            "db_operation_errors",
            "Store operations that failed (a refusal such as a version already taken is not a failure), by operation",
            metrics.db_errors.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Counts a connection accepted and open until the guard is dropped.
    pub fn connection(&self) -> OpenConnection {
        self.connections_accepted.inc();
        self.connections_open.inc();
        OpenConnection {
            open: self.connections_open.clone(),
        }
    }

    /// One answered request. `route` is the described path template (or `unmatched`).
    pub fn request(&self, method: &str, route: &'static str, status: u16, elapsed: Duration) {
        let method = known_method(method);
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels { method, route })
            .observe(elapsed.as_secs_f64());
    }

    /// One fan-out of `event` (`policy`, `overrides`, `block`, `unblock`, `approval`, `rollout`).
    pub fn broadcast(&self, event: &'static str, elapsed: Duration, queued: usize, dropped: usize) {
        self.broadcast_seconds
            .get_or_create(&EventLabels { event })
            .observe(elapsed.as_secs_f64());
        for (result, count) in [("queued", queued), ("dropped", dropped)] {
            self.broadcast_deliveries
                .get_or_create(&DeliveryLabels { event, result })
                .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
        }
    }

    /// One alert delivery to `channel` (empty for names no config holds).
    pub fn notification(&self, channel: &str, outcome: &'static str) {
        self.notifications
            .get_or_create(&NotificationLabels {
                channel: channel.to_owned(),
                outcome,
            })
            .inc();
    }

    /// One store operation.
    pub fn db_operation(&self, operation: &'static str, elapsed: Duration, ok: bool) {
        let labels = OperationLabels { operation };
        self.db_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.db_errors.get_or_create(&labels).inc();
        }
    }

    /// Replaces the fleet's gauges with `orgs` (orgs no longer listed disappear) and encodes
    /// every metric as OpenMetrics text.
    pub fn scrape(&self, orgs: &[OrgGauges]) -> String {
        let _guard = self
            .scrape
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let families = [
            &self.agents,
            &self.agents_online,
            &self.agents_outdated,
            &self.policy_version,
            &self.streams_open,
        ];
        for family in families {
            family.clear();
        }
        self.approvals.clear();
        for org in orgs {
            let labels = OrgLabels {
                org: org.org.clone(),
            };
            let set = |family: &Family<OrgLabels, Gauge>, value: u64| {
                family
                    .get_or_create(&labels)
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            };
            set(&self.agents, org.agents);
            set(&self.agents_online, org.online);
            set(&self.agents_outdated, org.outdated);
            set(&self.streams_open, org.streams);
            if let Some(version) = org.policy_version {
                set(&self.policy_version, version);
            }
            for (status, count) in &org.approvals {
                self.approvals
                    .get_or_create(&ApprovalLabels {
                        org: org.org.clone(),
                        status,
                    })
                    .set(i64::try_from(*count).unwrap_or(i64::MAX));
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// A connection being served: counted in `connections_open` until dropped.
#[derive(Debug)]
pub struct OpenConnection {
    open: Gauge,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// The method as a label: the standard ones, or `other` (so a client cannot mint series).
fn known_method(method: &str) -> &'static str {
    const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
    METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_appear_in_the_text_with_their_labels() {
        let metrics = ServerMetrics::new();
        metrics.request("POST", "/api/policy", 201, Duration::from_millis(3));
        metrics.request("BREW", "unmatched", 404, Duration::from_millis(1));
        metrics.db_operation("insert_policy", Duration::from_micros(300), false);
        let orgs = [OrgGauges {
            org: "acme".to_owned(),
            agents: 3,
            online: 2,
            outdated: 1,
            policy_version: Some(7),
            streams: 2,
            approvals: vec![("pending", 4)],
        }];
        let text = metrics.scrape(&orgs);
        for line in [
            r#"policy_server_http_requests_total{method="POST",route="/api/policy",status="201"} 1"#,
            r#"policy_server_http_requests_total{method="other",route="unmatched",status="404"} 1"#,
            r#"policy_server_db_operation_errors_total{operation="insert_policy"} 1"#,
            r#"policy_server_agents_online{org="acme"} 2"#,
            r#"policy_server_policy_version{org="acme"} 7"#,
            r#"policy_server_approvals{org="acme",status="pending"} 4"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        // An org gone from the fleet leaves no stale series.
        let text = metrics.scrape(&[]);
        assert!(!text.contains(r#"org="acme""#), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
