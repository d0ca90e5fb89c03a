//! One simulated agent: its own TLS connection holding its event stream (read by
//! [`StreamClient`]; reconnecting as the
//! real agent does: `Last-Event-ID`, `Retry-After` on 503, a random moment of the next seconds
//! after a stream ends), and, once the load phase starts, heartbeats and reports on the shared
//! client's pooled connections. What it sees goes to the simulator as [`Seen`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use policy_engine::protocol::{HeartbeatRequest, Report, ReportOutcome};
use policy_engine::{Action, ActionRecord, PolicyDuration, PolicyVersion, Scope};
use rand::Rng;
use tokio::sync::{mpsc, watch};

use super::frame::policy_id;
use super::sse::{Opened, StreamClient};
use super::stats::Samples;

/// What an agent tells the simulator.
#[derive(Debug, Clone, Copy)]
pub enum Seen {
    /// Its stream is open.
    Opened {
        /// The agent.
        agent: usize,
    },
    /// A `policy` event arrived.
    Policy {
        /// The agent.
        agent: usize,
        /// Its version.
        version: u64,
        /// When it was read.
        at: Instant,
        /// When the kernel received it on the agent's socket, before the simulator decrypted
        /// and parsed it.
        received: Option<SystemTime>,
    },
}

/// One enrolled agent and the replica it streams from.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Index in the fleet.
    pub index: usize,
    /// `agent-...`
    pub id: String,
    /// Its token.
    pub token: String,
    /// Base URL of its replica.
    pub base: String,
}

/// How many failures [`Load::first_errors`] describes.
pub const FIRST_ERRORS: usize = 5;

impl Load {
    /// Counts a failure, described by `what` if it is one of the first.
    fn error(&mut self, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_errors.len() < FIRST_ERRORS {
            self.first_errors.push(what());
        }
    }
}

/// Counters and samples of the whole fleet.
#[derive(Debug, Default)]
pub struct Load {
    /// Heartbeat round trips.
    pub heartbeats: Samples,
    /// Report round trips.
    pub reports: Samples,
    /// Stream requests answered 503 `busy`.
    pub busy: u64,
    /// Failed requests (connection errors, other statuses).
    pub errors: u64,
    /// What the first [`FIRST_ERRORS`] failures were (which request, and why).
    pub first_errors: Vec<String>,
    /// Streams that ended and were opened again.
    pub reconnects: u64,
}

/// What every agent shares.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Event streams: a TLS connection each ([`StreamClient`]).
    pub streams: StreamClient,
    /// One HTTP/1.1 client for heartbeats and reports, on pooled connections.
    pub client: reqwest::Client,
    /// Where agents tell what they see.
    pub seen: mpsc::UnboundedSender<Seen>,
    /// Counters.
    pub load: Arc<Mutex<Load>>,
    /// Whether heartbeats and reports run.
    pub busy_phase: watch::Receiver<bool>,
    /// Time between heartbeats of one agent.
    pub heartbeat: Duration,
    /// Time between reports of one agent.
    pub report: Duration,
    /// Longest random wait before reconnecting after a stream ended.
    pub spread: Duration,
}

/// Starts the agent's tasks.
pub fn spawn(agent: Identity, fleet: Fleet) {
    let version = Arc::new(AtomicU64::new(0));
    tokio::spawn(stream(agent.clone(), fleet.clone(), version.clone()));
    tokio::spawn(requests(agent, fleet, version));
}

fn random_within(ceiling: Duration) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

fn count(fleet: &Fleet, what: impl FnOnce(&mut Load)) {
    if let Ok(mut load) = fleet.load.lock() {
        what(&mut load);
    }
}

async fn stream(agent: Identity, fleet: Fleet, version: Arc<AtomicU64>) {
    let mut opened_before = false;
    loop {
        let last = version.load(Ordering::Acquire);
        let opened = fleet
            .streams
            .open(&agent.base, &agent.token, (last > 0).then_some(last))
            .await;
        let mut events = match opened {
            Ok(Opened::Stream(events)) => events,
            Ok(Opened::Busy(wait)) => {
                count(&fleet, |l| l.busy += 1);
                tokio::time::sleep(wait + random_within(wait)).await;
                continue;
            }
            Ok(Opened::Refused) => {
                count(&fleet, |l| l.error(|| "stream: refused".to_owned()));
                tokio::time::sleep(random_within(fleet.spread)).await;
                continue;
            }
            Err(error) => {
                count(&fleet, |l| l.error(|| format!("stream: {error:#}")));
                tokio::time::sleep(random_within(fleet.spread)).await;
                continue;
            }
        };
        if opened_before {
            count(&fleet, |l| l.reconnects += 1);
        }
        opened_before = true;
        let _ = fleet.seen.send(Seen::Opened { agent: agent.index });
        while let Ok(Some(frame)) = events.next_frame().await {
            if let Some(number) = policy_id(&frame) {
                version.store(number, Ordering::Release);
                let _ = fleet.seen.send(Seen::Policy {
                    agent: agent.index,
                    version: number,
                    at: Instant::now(),
                    received: events.received(),
                });
            }
        }
        // The stream ended (the replica restarted or died): back at a random moment.
        tokio::time::sleep(random_within(fleet.spread)).await;
    }
}

async fn requests(agent: Identity, fleet: Fleet, version: Arc<AtomicU64>) {
    let mut phase = fleet.busy_phase.clone();
    while !*phase.borrow() {
        if phase.changed().await.is_err() {
            return;
        }
    }
    let heartbeat_url = format!("{}/api/agents/{}/heartbeat", agent.base, agent.id);
    let report_url = format!("{}/api/agents/{}/reports", agent.base, agent.id);
    // Random phases, as a fleet started at different times has.
    let mut next_heartbeat = Instant::now() + random_within(fleet.heartbeat);
    let mut next_report = Instant::now() + random_within(fleet.report);
    let mut reports = 0u64;
    let Ok(duration) = "24h".parse::<PolicyDuration>() else {
        return;
    };
    loop {
        let next = next_heartbeat.min(next_report);
        tokio::time::sleep_until(next.into()).await;
        let current = version.load(Ordering::Acquire);
        let policy_version = (current > 0).then(|| PolicyVersion::new(current));
        let started = Instant::now();
        let (sent, heartbeat) = if next == next_heartbeat {
            next_heartbeat += fleet.heartbeat;
            let body = HeartbeatRequest {
                policy_version,
                last_error: None,
                ack: None,
                shadow: None,
            };
            (fleet.client.post(&heartbeat_url).json(&body), true)
        } else {
            next_report += fleet.report;
            reports += 1;
            let report = Report {
                record: ActionRecord {
                    action: Action::BlockIp {
                        ip: std::net::IpAddr::from([198, 51, 100, (reports % 250) as u8 + 1]),
                        duration,
                        scope: Scope::Host,
                    },
                    rule: 0,
                    policy_version: policy_version.unwrap_or(PolicyVersion::new(1)),
                    event_id: Some(format!("sim-{}-{reports}", agent.index)),
                },
                outcome: Some(ReportOutcome::Executed),
                detail: None,
                approval_id: None,
                report_id: format!("sim-{}-{reports}", agent.index).parse().ok(),
            };
            (fleet.client.post(&report_url).json(&report), false)
        };
        let answer = sent
            .bearer_auth(&agent.token)
            .timeout(super::REQUEST_TIMEOUT)
            .send()
            .await;
        let elapsed = started.elapsed();
        match answer {
            Ok(response) if response.status().is_success() => {
                let _ = response.bytes().await;
                count(&fleet, |l| {
                    if heartbeat {
                        l.heartbeats.push(elapsed);
                    } else {
                        l.reports.push(elapsed);
                    }
                });
            }
            answer => {
                let kind = if heartbeat { "heartbeat" } else { "report" };
                count(&fleet, |l| {
                    l.error(|| match answer {
                        Ok(response) => format!("{kind}: HTTP {}", response.status()),
                        // The whole chain: reqwest's own message hides the cause.
                        Err(error) => format!("{kind}: {:#}", anyhow::Error::new(error)),
                    })
                });
            }
        }
    }
}
