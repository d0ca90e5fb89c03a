//! The agent runtime (feature `agent`): what runs on every host of a fleet, as a library type.
//!
//! An [`Agent`] keeps its engine on the server's newest policy (`sync`), reads threat events
//! from its [`Source`]s, carries out the actions with an [`Executor`], and reports every action
//! to the server through a durable [`Outbox`]. The server's fleet events (blocks, unblocks,
//! approved actions) run on the same executor.
//!
//! ```text
//! sources (threads) ─▶ Pipeline ─▶ LiveEngine ─▶ actions ─▶ Dispatcher (lanes, blocking pool, deadline)
//!                                     ▲                          │            ▲
//!   server ── SSE ─▶ PolicySync ──────┘      fleet events ───────┼────────────┘
//!          ◀─ heartbeats ──────────────                          ▼
//!          ◀─ POST reports ◀── ReportSender ◀── Outbox (state dir) ◀── report of each outcome
//! ```
//!
//! Three rules hold it together:
//!
//! - **Executor work never runs on an async worker.** Every call to the executor runs on
//!   tokio's blocking pool with a deadline, in a lane per part of the host (see
//!   `dispatch.rs`): a hung `nft` or a process that ignores SIGTERM never delays a heartbeat,
//!   a policy update, or an action on another part of the host.
//! - **A report is on disk before it is sent**, and stays there until the server answered: a
//!   server outage or an agent restart loses nothing, and the report id makes a resend harmless.
//! - **The agent never waits for the server to enforce.** The last good policy comes from disk;
//!   the id, heartbeats and reports follow whenever the server is reachable.
//!
//! Embedding it:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use policy_engine::agent::{self, Agent, Source};
//! use policy_engine::sync::TlsTrust;
//! let server = "https://policy.example.org:8443";
//! let state_dir = "/var/lib/policy-agent";
//! let agent = Agent::builder(server, state_dir)
//!     .token(std::env::var("POLICY_AGENT_TOKEN")?)
//!     .trust(TlsTrust::CaFile("/etc/policy-agent/ca.pem".into()))
//!     .source(Source::SshdLog { path: "/var/log/auth.log".into(), from_start: false })
//!     .host_executor(agent::host_config(server, state_dir))
//!     .start()
//!     .await?;
//! agent.run_until(agent::terminated()).await?;
//! # Ok(()) }
//! ```

mod credentials;
mod dispatch;
mod error;
mod fleet;
mod metrics;
mod outbox;
mod pipeline;
mod report;
mod source;

use std::future::Future;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use credentials::{CREDENTIALS_FILE, Credentials, Enrollment, enroll};
pub use dispatch::{LANE_CAPACITY, MAX_BATCH, MAX_PARALLEL_KILLS};
pub use error::AgentError;
pub use fleet::{APPROVALS_FILE, ApprovalDecision, ApprovalLedger};
pub use metrics::{AgentMetrics, MetricsServer};
pub use outbox::{DropCause, Dropped, Outbox, OutboxError, OutboxLimits, Pending};
pub use pipeline::{Pipeline, PipelineStats};
pub use source::{Source, SourceError};

use dispatch::{DispatchConfig, Dispatcher};
use pipeline::SharedOutput;
use report::{Origin, ReportQueue, ReportSender, SenderConfig};

use crate::action::ActionRecord;
use crate::engine::EngineConfig;
use crate::event::ThreatEvent;
use crate::executor::{Executor, HostConfig, HostExecutor, RecordingExecutor};
use crate::protocol::FleetEvent;
use crate::signing::{KeyRing, PublicKey};
use crate::sync::{
    ApiClient, BackoffConfig, FleetEvents, LiveEngine, PolicySync, SignatureCheck, SyncConfig,
    TlsTrust,
};

/// Directory of the outbox in the state dir.
pub const OUTBOX_DIR: &str = "outbox";

/// Timing of an agent; [`Settings::default`] is what operators run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Time between heartbeats (default 30 s; one also goes out after each policy change).
    pub heartbeat_interval: Duration,
    /// Reconnect and resend delays (default 0.5 s doubling up to 30 s, with jitter).
    pub backoff: BackoffConfig,
    /// Delay after the server refused the token (default 5 minutes).
    pub unauthorized_retry: Duration,
    /// With no policy on disk (a first start), how long [`Agent::run`] waits for the server's
    /// before reading events (default 10 s); events wait in their pipe or file meanwhile.
    pub first_policy_wait: Duration,
    /// The longest one action may run before it is reported as failed (default 60 s; `nft`
    /// runs have their own, shorter timeout, a kill its grace period).
    pub action_deadline: Duration,
    /// Time between executor upkeeps (default 5 s).
    pub upkeep_interval: Duration,
    /// At shutdown, how long to wait for running actions, and then for the outbox to empty
    /// (default 5 s each; what is left stays on disk for the next start).
    pub shutdown_drain: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(30),
            backoff: BackoffConfig::default(),
            unauthorized_retry: Duration::from_secs(300),
            first_policy_wait: Duration::from_secs(10),
            action_deadline: Duration::from_secs(60),
            upkeep_interval: Duration::from_secs(5),
            shutdown_drain: Duration::from_secs(5),
        }
    }
}

/// Builds an [`Agent`]: the server, credentials, state dir, event sources, executor.
pub struct AgentBuilder {
    server: String,
    state_dir: PathBuf,
    token: Option<String>,
    agent_id: Option<String>,
    trust: TlsTrust,
    sources: Vec<Source>,
    executor: Option<Arc<dyn Executor>>,
    host: Option<HostConfig>,
    enrollment: Option<Enrollment>,
    dry_run: bool,
    output: Option<Box<dyn Write + Send>>,
    engine: EngineConfig,
    settings: Settings,
    outbox: OutboxLimits,
    metrics: Option<AgentMetrics>,
    metrics_listen: Option<SocketAddr>,
    policy_keys: Vec<PublicKey>,
    policy_org: Option<String>,
}

impl std::fmt::Debug for AgentBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentBuilder")
            .field("server", &self.server)
            .field("state_dir", &self.state_dir)
            .field("agent_id", &self.agent_id)
            .field("sources", &self.sources)
            .field("dry_run", &self.dry_run)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl AgentBuilder {
    /// The agent's token (default: the one an enrollment stored in the state dir).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The agent's id (default: the stored one that goes with the token, else the server says
    /// it: `GET /api/agents/me`).
    pub fn agent_id(mut self, agent_id: impl Into<String>) -> Self {
        self.agent_id = Some(agent_id.into());
        self
    }

    /// Which server certificates to trust (default: the web PKI).
    pub fn trust(mut self, trust: TlsTrust) -> Self {
        self.trust = trust;
        self
    }

    /// Reads events from `source` too.
    pub fn source(mut self, source: Source) -> Self {
        self.sources.push(source);
        self
    }

    /// The token and the id when given (`None` leaves the default); what a command line with
    /// optional `--token` and `--agent-id` flags needs.
    pub fn credentials(mut self, token: Option<String>, agent_id: Option<String>) -> Self {
        self.token = token.or(self.token);
        self.agent_id = agent_id.or(self.agent_id);
        self
    }

    /// Pins the agent to operator signing keys: from then on it runs only policy versions
    /// signed by one of them for its org, newer than the one it runs (or the signed fallback of
    /// a rollback), and fails closed otherwise. Two keys during a rotation.
    pub fn policy_keys(mut self, keys: Vec<PublicKey>) -> Self {
        self.policy_keys = keys;
        self
    }

    /// The org signatures must be for (default: the org stored at enrollment).
    pub fn policy_org(mut self, org: Option<String>) -> Self {
        self.policy_org = org;
        self
    }

    /// Enrolls a new agent first, when [`AgentBuilder::start`] runs, with an admin token; its
    /// credentials are stored in the state dir and take the place of any given.
    pub fn enroll_first(mut self, enrollment: Enrollment) -> Self {
        self.enrollment = Some(enrollment);
        self
    }

    /// Carries out actions with `executor`.
    pub fn executor(mut self, executor: impl Executor + 'static) -> Self {
        self.executor = Some(Arc::new(executor));
        self.host = None;
        self
    }

    /// Carries out actions on this host with a [`HostExecutor`], opened by
    /// [`AgentBuilder::start`] with `config` (see [`host_config`] for an agent's defaults).
    pub fn host_executor(mut self, config: HostConfig) -> Self {
        self.host = Some(config);
        self.executor = None;
        self
    }

    /// Carries out nothing, whatever the executor: every action is reported as `skipped`
    /// (`dry run: would ...`), alerts and approval requests still reach the server.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Prints each action as the contract's action JSON, one per line, to `out` (stdout for
    /// the reference agent).
    pub fn print_actions(mut self, out: impl Write + Send + 'static) -> Self {
        self.output = Some(Box::new(out));
        self
    }

    /// The engine's limits (default [`EngineConfig::default`]).
    pub fn engine(mut self, config: EngineConfig) -> Self {
        self.engine = config;
        self
    }

    /// Time between heartbeats (see [`Settings::heartbeat_interval`]).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.settings.heartbeat_interval = interval;
        self
    }

    /// Longest reconnect and report resend delay (the ceiling of [`Settings::backoff`]).
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.settings.backoff.max = max;
        self
    }

    /// See [`Settings::first_policy_wait`].
    pub fn first_policy_wait(mut self, wait: Duration) -> Self {
        self.settings.first_policy_wait = wait;
        self
    }

    /// Per-rule cap on tracked keys (source IPs), see [`EngineConfig::max_keys_per_rule`].
    pub fn max_keys_per_rule(mut self, max: usize) -> Self {
        self.engine.max_keys_per_rule = max;
        self
    }

    /// The timing (default [`Settings::default`]).
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// How much the outbox holds while the server is away (default [`OutboxLimits::default`]).
    pub fn outbox_limits(mut self, limits: OutboxLimits) -> Self {
        self.outbox = limits;
        self
    }

    /// Counts into `metrics` (default: new ones, read with [`AgentHandle::metrics`]); give your
    /// own to register them into your registry before the agent starts.
    pub fn metrics(mut self, metrics: AgentMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Serves the metrics at `http://addr/metrics` (plain HTTP, no token: bind it to loopback
    /// or the monitoring network) while the agent runs.
    pub fn metrics_listen(mut self, addr: SocketAddr) -> Self {
        self.metrics_listen = Some(addr);
        self
    }

    /// Starts the agent on the current tokio runtime: loads the last good policy from the
    /// state dir, connects to the server, opens the outbox and starts sending what a previous
    /// run left in it. Events are read by [`Agent::run`].
    ///
    /// Fails on configuration errors only (server URL, CA file, credentials, state dir); an
    /// unreachable server is not an error.
    pub async fn start(mut self) -> Result<Agent, AgentError> {
        // Configuration errors first, before anything is logged or written.
        let client = ApiClient::new(&self.server, &self.trust)?;
        std::fs::create_dir_all(&self.state_dir).map_err(|source| AgentError::StateDir {
            path: self.state_dir.clone(),
            source,
        })?;
        if let Some(enrollment) = &self.enrollment {
            let enrolled = enroll(&self.server, &self.trust, enrollment, &self.state_dir).await?;
            self.token = Some(enrolled.token);
            self.agent_id = enrolled.agent_id;
        }
        let stored = Credentials::load(&self.state_dir)?;
        let credentials =
            Credentials::resolve(self.token, self.agent_id, stored).ok_or_else(|| {
                AgentError::NoCredentials {
                    path: self.state_dir.join(CREDENTIALS_FILE),
                }
            })?;
        let executor: Arc<dyn Executor> = match (self.executor, self.host, self.dry_run) {
            (_, _, true) => Arc::new(RecordingExecutor::discarding()),
            (Some(executor), _, false) => executor,
            (None, Some(config), false) => {
                // Opening runs `nft`: off the async workers.
                let opened = tokio::task::spawn_blocking(move || HostExecutor::open(config))
                    .await
                    .map_err(|join| AgentError::Thread(std::io::Error::other(join)))??;
                Arc::new(opened)
            }
            (None, None, false) => return Err(AgentError::NoExecutor),
        };
        let outbox_dir = self.state_dir.join(OUTBOX_DIR);
        let limits = self.outbox;
        let outbox = tokio::task::spawn_blocking(move || Outbox::open(&outbox_dir, limits))
            .await
            .map_err(|join| AgentError::Thread(std::io::Error::other(join)))??;
        let outbox = Arc::new(outbox);
        let settings = self.settings;

        let signatures = if self.policy_keys.is_empty() {
            None
        } else {
            let org_id = self
                .policy_org
                .or_else(|| credentials.org_id.clone())
                .ok_or(AgentError::NoPolicyOrg)?;
            Some(SignatureCheck {
                keys: KeyRing::new(self.policy_keys),
                org_id,
            })
        };
        let live = LiveEngine::with_signatures(self.engine, signatures);
        let metrics = self.metrics.unwrap_or_default();
        metrics.attach(live.clone(), outbox.clone());
        let metrics_server = match self.metrics_listen {
            Some(addr) => Some(
                metrics
                    .serve(addr)
                    .await
                    .map_err(|source| AgentError::Metrics { addr, source })?,
            ),
            None => None,
        };
        let note = outbox.dropped().note(Utc::now(), limits);
        live.update_status(|s| s.warning = note);
        let (fleet_events, fleet_queue) = FleetEvents::channel(256);
        let mut config = match &credentials.agent_id {
            Some(id) => SyncConfig::new(&self.server, id, &credentials.token, &self.state_dir),
            None => SyncConfig::for_token(&self.server, &credentials.token, &self.state_dir),
        };
        config.trust = self.trust;
        config.heartbeat_interval = settings.heartbeat_interval;
        config.backoff = settings.backoff;
        config.unauthorized_retry = settings.unauthorized_retry;
        let inject = fleet_events.downgrade();
        config.fleet = Some(fleet_events);
        let sync = PolicySync::start(config, live.clone()).await?;

        let reports = ReportQueue::new(outbox.clone());
        let dispatcher = Dispatcher::start(
            executor.clone(),
            reports.clone(),
            DispatchConfig {
                deadline: settings.action_deadline,
                dry_run: self.dry_run,
            },
            metrics.clone(),
            live.clone(),
        );
        let fleet = fleet::spawn(fleet_queue, dispatcher.clone(), &self.state_dir);
        let (stop, _) = watch::channel(false);
        let sender = ReportSender::new(
            reports,
            client,
            credentials.token,
            live.clone(),
            SenderConfig {
                backoff: settings.backoff,
                unauthorized_retry: settings.unauthorized_retry,
            },
        );
        let sending = {
            let stopped = stop.subscribe();
            tokio::spawn(async move {
                sender.run(stopped).await;
                sender
            })
        };
        let upkeep = tokio::spawn(upkeep_loop(
            executor,
            live.clone(),
            outbox.clone(),
            settings.upkeep_interval,
            stop.subscribe(),
        ));
        Ok(Agent {
            handle: AgentHandle {
                live,
                dispatcher,
                outbox,
                fleet: inject,
                shutdown: Arc::new(watch::Sender::new(false)),
                metrics,
                metrics_addr: metrics_server.as_ref().map(MetricsServer::local_addr),
            },
            metrics_server,
            server: self.server,
            sources: self.sources,
            output: SharedOutput::new(self.output.unwrap_or_else(|| Box::new(std::io::sink()))),
            settings,
            sync,
            fleet,
            sending,
            upkeep,
            stop,
        })
    }
}

/// A started agent; [`Agent::run`] reads its events until they end or it is shut down.
pub struct Agent {
    handle: AgentHandle,
    server: String,
    sources: Vec<Source>,
    output: SharedOutput,
    settings: Settings,
    sync: PolicySync,
    fleet: JoinHandle<()>,
    sending: JoinHandle<ReportSender>,
    upkeep: JoinHandle<()>,
    /// Stops the sender and the upkeep.
    stop: watch::Sender<bool>,
    /// The metrics endpoint, served until the agent has shut down.
    metrics_server: Option<MetricsServer>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("server", &self.server)
            .field("sources", &self.sources)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// The counts of every source that ended.
    pub events: PipelineStats,
    /// Reports still in the outbox at exit (sent after the next start).
    pub reports_left: usize,
}

impl Agent {
    /// A builder for an agent of `server` (`https://host:port`) keeping its state (last good
    /// policy, credentials, outbox, approval ledger) in `state_dir`.
    pub fn builder(server: impl Into<String>, state_dir: impl Into<PathBuf>) -> AgentBuilder {
        AgentBuilder {
            server: server.into(),
            state_dir: state_dir.into(),
            token: None,
            agent_id: None,
            trust: TlsTrust::default(),
            sources: Vec::new(),
            executor: None,
            host: None,
            enrollment: None,
            dry_run: false,
            output: None,
            engine: EngineConfig::default(),
            settings: Settings::default(),
            outbox: OutboxLimits::default(),
            metrics: None,
            metrics_listen: None,
            policy_keys: Vec::new(),
            policy_org: None,
        }
    }

    /// A handle to feed events in, watch the engine, or shut the agent down from elsewhere.
    pub fn handle(&self) -> AgentHandle {
        self.handle.clone()
    }

    /// Runs until every source has ended (stdin closed) or [`AgentHandle::shutdown`]; then
    /// shuts down gracefully. An agent without sources runs until shut down.
    pub async fn run(self) -> Result<RunSummary, AgentError> {
        self.run_until(std::future::pending()).await
    }

    /// Like [`Agent::run`], and also stops when `stop` completes (e.g. on SIGTERM).
    ///
    /// The graceful shutdown stops the sources, waits (at most `shutdown_drain`) for the
    /// actions already decided to run and be filed, sends what the outbox holds (until it is
    /// empty, the server fails to answer, or `shutdown_drain` passes) and closes the
    /// connection. Reports not sent stay on disk for the next start.
    pub async fn run_until(
        mut self,
        stop: impl Future<Output = ()>,
    ) -> Result<RunSummary, AgentError> {
        let mut shutdown = self.handle.shutdown.subscribe();
        let requested = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        tokio::pin!(stop, requested);
        let live = self.handle.live.clone();
        if live.version().is_none()
            && !self.sources.is_empty()
            && self.wait_first_policy(&mut stop, &mut requested).await
        {
            // Stopped before any event was read.
            let reports_left = self.shut_down().await;
            return Ok(RunSummary {
                events: PipelineStats::default(),
                reports_left,
            });
        }
        tracing::info!(
            agent = ?live.status().agent_id,
            server = %self.server,
            policy = ?live.version(),
            "agent started"
        );
        let halt = Arc::new(AtomicBool::new(false));
        let output = self.output.clone();
        let mut ends = FuturesUnordered::new();
        for source in std::mem::take(&mut self.sources) {
            let pipeline = Pipeline::dispatching(
                live.clone(),
                self.handle.dispatcher.clone(),
                self.handle.metrics.clone(),
                output.clone(),
            );
            ends.push(source::spawn(source, pipeline, halt.clone()).map_err(AgentError::Thread)?);
        }
        let mut stats = PipelineStats::default();
        let mut failure = None;
        let sources = ends.len();
        let all_ended = async {
            while let Some(end) = ends.next().await {
                match end {
                    Ok(Ok(counts)) => stats += counts,
                    Ok(Err(err)) => {
                        failure = Some(err);
                        return;
                    }
                    Err(_) => {}
                }
            }
            if sources == 0 {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = all_ended => tracing::info!("the event sources ended"),
            () = &mut stop => tracing::info!("shutting down"),
            () = &mut requested => tracing::info!("shutting down"),
        }
        halt.store(true, Ordering::Relaxed);
        if failure.is_none() {
            tracing::info!(
                lines = stats.lines,
                events = stats.events,
                bad_lines = stats.bad_lines,
                actions = stats.actions,
                "events done"
            );
        }
        let reports_left = self.shut_down().await;
        match failure {
            Some(err) => Err(err.into()),
            None => Ok(RunSummary {
                events: stats,
                reports_left,
            }),
        }
    }

    /// A first start: events read now would meet no rules at all, so wait (bounded) for the
    /// server's policy. True if the agent was stopped meanwhile.
    async fn wait_first_policy(
        &self,
        stop: &mut (impl Future<Output = ()> + Unpin),
        requested: &mut (impl Future<Output = ()> + Unpin),
    ) -> bool {
        let wait = self.settings.first_policy_wait;
        tracing::info!(?wait, "no policy yet; waiting for the server's");
        let mut status = self.handle.live.subscribe();
        let arrived = tokio::select! {
            arrived = tokio::time::timeout(wait, status.wait_for(|s| s.applied.is_some())) => {
                matches!(arrived, Ok(Ok(_)))
            }
            () = stop => return true,
            () = requested => return true,
        };
        if !arrived {
            tracing::warn!(
                "no policy after {wait:?}; reading events anyway, nothing is enforced until one arrives"
            );
        }
        false
    }

    async fn shut_down(self) -> usize {
        let drain = self.settings.shutdown_drain;
        if !self.handle.dispatcher.idle(drain).await {
            tracing::warn!(
                "actions still running after {drain:?}; their reports are filed if they finish"
            );
        }
        let _ = self.stop.send(true);
        let left = match self.sending.await {
            Ok(sender) => sender.drain(drain).await,
            Err(_) => self.handle.outbox.len(),
        };
        self.sync.shutdown().await;
        // The sync's end closed the fleet event queue.
        let _ = self.fleet.await;
        let _ = self.upkeep.await;
        drop(self.metrics_server);
        left
    }
}

/// A handle to a running agent; cheap to clone.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    live: LiveEngine,
    dispatcher: Dispatcher,
    outbox: Arc<Outbox>,
    fleet: tokio::sync::mpsc::WeakSender<FleetEvent>,
    shutdown: Arc<watch::Sender<bool>>,
    metrics: AgentMetrics,
    metrics_addr: Option<SocketAddr>,
}

impl AgentHandle {
    /// Hands `event` to the agent as if the server had pushed it on the stream (another
    /// transport, a replay); false if the agent is shutting down or its queue is full.
    pub fn fleet_event(&self, event: FleetEvent) -> bool {
        self.fleet
            .upgrade()
            .is_some_and(|queue| queue.try_send(event).is_ok())
    }

    /// Runs `event` through the engine now and hands its actions to the executor (they run
    /// and are reported in the background); returns the actions.
    pub fn process(&self, event: &ThreatEvent) -> Vec<ActionRecord> {
        let started = Instant::now();
        let actions = self.live.process(event, Utc::now()).actions;
        self.metrics.evaluated(started.elapsed(), &actions);
        for record in &actions {
            self.dispatcher.execute(record.clone(), Origin::Local);
        }
        actions
    }

    /// The engine the agent keeps on the server's policy, with its status.
    pub fn live(&self) -> &LiveEngine {
        &self.live
    }

    /// The agent's metrics.
    pub fn metrics(&self) -> &AgentMetrics {
        &self.metrics
    }

    /// Where [`AgentBuilder::metrics_listen`] serves them (the real port when port 0 was asked
    /// for).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Waits until every action handed over so far has run and its report is in the outbox,
    /// at most `limit`; true if they all did.
    pub async fn settled(&self, limit: Duration) -> bool {
        self.dispatcher.idle(limit).await
    }

    /// Reports waiting in the outbox.
    pub fn pending_reports(&self) -> usize {
        self.outbox.len()
    }

    /// Reports dropped from the outbox so far.
    pub fn dropped_reports(&self) -> Dropped {
        self.outbox.dropped()
    }

    /// Makes [`Agent::run`] shut down gracefully.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

/// Completes on SIGINT or SIGTERM (systemd's stop): the usual `stop` for
/// [`Agent::run_until`].
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(term) => drop(term.recv().await),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// The host executor's configuration for an agent of `server`: its state under
/// `state_dir/host`, and the server's addresses never blocked and kept reachable while the host
/// is isolated.
pub fn host_config(server: &str, state_dir: impl AsRef<Path>) -> HostConfig {
    HostConfig::new(state_dir.as_ref().join("host"), server_addresses(server))
}

/// The addresses `server` (`https://host:port`) resolves to now (port 443 if none is given);
/// none if it does not resolve.
pub fn server_addresses(server: &str) -> Vec<SocketAddr> {
    let rest = server.split_once("://").map_or(server, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:443")
    };
    with_port
        .to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default()
}

/// Every `interval`: executor upkeep on the blocking pool (skipped while the previous one still
/// runs, e.g. behind a hung `nft`), and the outbox's drop note for the heartbeat.
async fn upkeep_loop(
    executor: Arc<dyn Executor>,
    live: LiveEngine,
    outbox: Arc<Outbox>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running: Option<JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        let note = outbox.dropped().note(Utc::now(), outbox.limits());
        if live.status().warning != note {
            live.update_status(|s| s.warning = note);
        }
        if running.as_ref().is_some_and(|task| !task.is_finished()) {
            tracing::debug!("the previous executor upkeep is still running");
            continue;
        }
        let status = live.status();
        let unreachable_for = if status.connected {
            Duration::ZERO
        } else {
            status
                .last_contact
                .map_or_else(|| started.elapsed(), |t| t.elapsed())
        };
        let executor = executor.clone();
        running = Some(tokio::task::spawn_blocking(move || {
            for outcome in executor.maintain(unreachable_for) {
                tracing::info!(%outcome, "executor upkeep");
            }
        }));
    }
}
