//! The sync tasks: restore the last known good policy, follow the event stream with backoff,
//! persist what is applied, and send heartbeats.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest_eventsource::{Error as StreamError, Event, EventSource, retry::Never};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::backoff::jitter;
use super::client::{error_chain, status_error};
use super::{
    ApiClient, Applied, ApplyError, Backoff, BackoffConfig, HeartbeatReply, LiveEngine,
    PolicyUpdate, StateStore, SyncError, TlsTrust,
};
use crate::policy::PolicyVersion;
use crate::protocol::{
    HeartbeatRequest, SHADOW_END_EVENT, SHADOW_EVENT, ShadowEndEvent, ShadowEvent,
};

/// Everything the sync tasks need to know.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Server base URL, `https://host:port`.
    pub server: String,
    /// This agent's id, from enrollment; `None` to learn it from the server with the token
    /// (`GET /api/agents/me`).
    pub agent_id: Option<String>,
    /// This agent's bearer token, from enrollment.
    pub token: String,
    /// Which server certificates to trust.
    pub trust: TlsTrust,
    /// Where the last known good policy is kept.
    pub state_dir: PathBuf,
    /// Time between heartbeats (one is also sent right after each applied or refused policy).
    pub heartbeat_interval: Duration,
    /// Reconnect delays of the event stream.
    pub backoff: BackoffConfig,
    /// Delay before retrying after the server rejected the token (401/403): long, since
    /// retrying will not fix a revoked token and an operator has to act.
    pub unauthorized_retry: Duration,
    /// Longest silence on a connection before it counts as dead (the server sends a keep-alive
    /// at least every 15 s).
    pub idle_timeout: Duration,
    /// Where `block`, `unblock` and `approval` events go (see [`super::fleet`]); `None`
    /// ignores them.
    pub fleet: Option<super::FleetEvents>,
}

impl SyncConfig {
    /// A configuration with the defaults: heartbeat every 30 s, reconnects from 0.5 s up to
    /// 30 s, 5 minutes after a rejected token, 45 s idle timeout, web PKI trust.
    pub fn new(
        server: impl Into<String>,
        agent_id: impl Into<String>,
        token: impl Into<String>,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            server: server.into(),
            agent_id: Some(agent_id.into()),
            token: token.into(),
            trust: TlsTrust::WebPki,
            state_dir: state_dir.into(),
            heartbeat_interval: Duration::from_secs(30),
            backoff: BackoffConfig::default(),
            unauthorized_retry: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(45),
            fleet: None,
        }
    }

    /// Like [`SyncConfig::new`] for an agent that knows only its token: it asks the server who
    /// it is before its first heartbeat.
    pub fn for_token(
        server: impl Into<String>,
        token: impl Into<String>,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            agent_id: None,
            ..Self::new(server, "", token, state_dir)
        }
    }
}

/// The running sync of one agent: it keeps a [`LiveEngine`] on the newest policy the server
/// pushes, and keeps running on the last good one while the server is away.
///
/// ```no_run
/// # async fn demo() -> Result<(), policy_engine::sync::SyncError> {
/// use policy_engine::engine::EngineConfig;
/// use policy_engine::sync::{LiveEngine, PolicySync, SyncConfig, TlsTrust};
/// let mut config = SyncConfig::new("https://127.0.0.1:8443", "agent-1a2b", "agt_...", "/var/lib/agent");
/// config.trust = TlsTrust::CaFile("/etc/agent/ca.pem".into());
/// let live = LiveEngine::new(EngineConfig::default());
/// let sync = PolicySync::start(config, live.clone()).await?;
/// // ... feed events to `live.process(&event, chrono::Utc::now())` from any thread ...
/// sync.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PolicySync {
    live: LiveEngine,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

struct Context {
    config: SyncConfig,
    client: ApiClient,
    store: StateStore,
    live: LiveEngine,
    heartbeat_now: Notify,
    /// Wakes the stream task to drop its connection and reconnect (see `heartbeat_loop`).
    resync: Notify,
    /// Policy events received so far, to tell a quiet stream from a stuck one.
    policy_events: AtomicU64,
    /// The last version refused, which a reconnect would only bring back.
    refused: Mutex<Option<PolicyVersion>>,
}

enum StreamEnd {
    Shutdown,
    Unauthorized(SyncError),
    Failed(String),
    /// 503 with `Retry-After`: the server sheds new streams (a reconnect storm).
    Busy(String, Duration),
}

impl PolicySync {
    /// Loads the last known good policy from the state dir into `live` (a missing file is
    /// normal on first start; an unreadable or corrupted one is logged, recorded as the last
    /// error and ignored), then spawns the stream and heartbeat tasks on the current tokio
    /// runtime. Fails only on a configuration error (bad URL, unreadable CA file).
    pub async fn start(config: SyncConfig, live: LiveEngine) -> Result<PolicySync, SyncError> {
        let client =
            ApiClient::with_idle_timeout(&config.server, &config.trust, config.idle_timeout)?;
        let store = StateStore::new(&config.state_dir);
        restore(&store, &live).await;
        if let Some(id) = &config.agent_id {
            live.update_status(|s| s.agent_id = Some(id.clone()));
        }
        let (shutdown, _) = watch::channel(false);
        let learn = config.agent_id.is_none();
        let context = Arc::new(Context {
            config,
            client,
            store,
            live: live.clone(),
            heartbeat_now: Notify::new(),
            resync: Notify::new(),
            policy_events: AtomicU64::new(0),
            refused: Mutex::new(None),
        });
        let mut tasks = vec![
            tokio::spawn(stream_loop(context.clone(), shutdown.subscribe())),
            tokio::spawn(heartbeat_loop(context.clone(), shutdown.subscribe())),
        ];
        if learn {
            tasks.push(tokio::spawn(identity_loop(context, shutdown.subscribe())));
        }
        Ok(PolicySync {
            live,
            shutdown,
            tasks,
        })
    }

    /// The engine this sync keeps up to date.
    pub fn live(&self) -> &LiveEngine {
        &self.live
    }

    /// Stops the tasks and closes the stream; the engine keeps its policy.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn restore(store: &StateStore, live: &LiveEngine) {
    let loaded = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.load()).await
    };
    match loaded {
        Ok(Ok(Some(stored))) => {
            let version = stored.version;
            match live.restore(stored) {
                Ok(_) => tracing::info!(%version, "enforcing the last known good policy from disk"),
                Err(err) => tracing::info!(%version, %err, "not using the policy on disk"),
            }
        }
        Ok(Ok(None)) => tracing::warn!(
            path = %store.policy_path().display(),
            "no policy on disk yet: nothing is enforced until the server sends one"
        ),
        Ok(Err(err)) => {
            tracing::warn!(%err, "ignoring the policy on disk");
            live.record_error(err.to_string());
        }
        Err(join) => tracing::warn!(%join, "reading the policy on disk failed"),
    }
}

async fn stream_loop(context: Arc<Context>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(context.config.backoff);
    loop {
        let started = Instant::now();
        let end = follow_stream(&context, &mut backoff, &mut shutdown).await;
        let was_open = context.live.status().connected;
        context.live.update_status(|s| s.connected = false);
        let wait = match end {
            StreamEnd::Shutdown => return,
            StreamEnd::Unauthorized(err) => {
                let wait = jitter(context.config.unauthorized_retry);
                tracing::error!(
                    %err,
                    retry_in = ?wait,
                    "the server rejected this agent's token: check the agent id and token \
                     (or enroll again); the current policy stays in force"
                );
                context.live.record_error(err.to_string());
                wait
            }
            StreamEnd::Failed(message) => {
                // A connection that stayed up a while was healthy: start the delays over.
                if started.elapsed() > context.config.backoff.max {
                    backoff.reset();
                }
                // An open stream that ends usually ends for every agent of its server at once
                // (a restart, a replica gone): come back at a random moment, not in a burst.
                let wait = if was_open {
                    backoff.after_disconnect()
                } else {
                    backoff.next_delay()
                };
                tracing::warn!(
                    server = %context.config.server,
                    error = %message,
                    retry_in = ?wait,
                    "event stream down; enforcing the current policy meanwhile"
                );
                wait
            }
            StreamEnd::Busy(message, retry_after) => {
                // Not before the server asked, spread over as long again; at least the backoff.
                let wait = jitter(retry_after.saturating_mul(2)).max(backoff.next_delay());
                tracing::warn!(
                    server = %context.config.server,
                    error = %message,
                    retry_in = ?wait,
                    "the server is busy; enforcing the current policy meanwhile"
                );
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn follow_stream(
    context: &Context,
    backoff: &mut Backoff,
    shutdown: &mut watch::Receiver<bool>,
) -> StreamEnd {
    let mut request = context.client.events_request(&context.config.token);
    if let Some(version) = context.live.version() {
        // The version this agent runs: the server skips sending it again.
        request = request.header("Last-Event-ID", version.number().to_string());
    }
    let mut source = match EventSource::new(request) {
        Ok(source) => source,
        Err(err) => return StreamEnd::Failed(err.to_string()),
    };
    source.set_retry_policy(Box::new(Never));
    let url = context.client.url("/api/events");
    loop {
        let next = tokio::select! {
            next = source.next() => next,
            _ = shutdown.changed() => {
                source.close();
                return StreamEnd::Shutdown;
            }
            () = context.resync.notified() => {
                source.close();
                return StreamEnd::Failed(
                    "no policy event although the server has a newer version; reconnecting"
                        .to_owned(),
                );
            }
        };
        match next {
            None => return StreamEnd::Failed("the stream closed".to_owned()),
            Some(Ok(Event::Open)) => {
                tracing::info!(server = %context.config.server, "event stream open");
                context.live.update_status(|s| {
                    s.connected = true;
                    s.last_contact = Some(Instant::now());
                });
            }
            Some(Ok(Event::Message(message))) => {
                context
                    .live
                    .update_status(|s| s.last_contact = Some(Instant::now()));
                if message.event == "policy" {
                    if on_policy(context, &message.data).await {
                        backoff.reset();
                    }
                } else if message.event == SHADOW_EVENT || message.event == SHADOW_END_EVENT {
                    on_shadow(context, &message.event, &message.data);
                } else if let Some(fleet) = &context.config.fleet {
                    if !fleet.dispatch(&message.event, &message.data) {
                        tracing::debug!(event = %message.event, "ignoring an unknown stream event");
                    }
                } else {
                    tracing::debug!(event = %message.event, "ignoring an unknown stream event");
                }
            }
            Some(Err(StreamError::InvalidStatusCode(status, response))) => {
                source.close();
                let retry_after = retry_after(status, &response, context.config.backoff.max);
                return match (status_error(&url, status, response).await, retry_after) {
                    (err @ SyncError::Unauthorized { .. }, _) => StreamEnd::Unauthorized(err),
                    (err, Some(wait)) => StreamEnd::Busy(err.to_string(), wait),
                    (err, None) => StreamEnd::Failed(err.to_string()),
                };
            }
            Some(Err(StreamError::StreamEnded)) => {
                return StreamEnd::Failed("the server ended the stream".to_owned());
            }
            Some(Err(StreamError::Transport(err))) => {
                source.close();
                return StreamEnd::Failed(error_chain(&err));
            }
            Some(Err(err)) => {
                // Garbage on the stream (invalid UTF-8, not SSE): start over on a new connection.
                source.close();
                return StreamEnd::Failed(format!("unreadable event stream: {err}"));
            }
        }
    }
}

/// The wait a 503 asks for in `Retry-After` (seconds; at most `cap`).
fn retry_after(
    status: reqwest::StatusCode,
    response: &reqwest::Response,
    cap: Duration,
) -> Option<Duration> {
    if status != reqwest::StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let seconds: u64 = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(cap))
}

/// Applies one pushed policy; true when it is running afterwards (applied or already running).
async fn on_policy(context: &Context, data: &str) -> bool {
    context.policy_events.fetch_add(1, Ordering::Relaxed);
    let live = &context.live;
    let update =
        PolicyUpdate::from_event(data).inspect_err(|err| live.record_error(err.to_string()));
    let offered = update.as_ref().ok().map(|u| u.version);
    let applied = match update.and_then(|update| live.check_update(&update)) {
        // Write-ahead: the policy is in the state dir before it runs, so that a version the
        // agent acted on or reported is the one a restart (even a SIGKILL right after) runs.
        Ok(Some(checked)) => {
            let saved = save(context, checked.policy()).await;
            let applied = live.apply_checked(checked);
            if let Err(error) = saved {
                // After applying, which clears the last error.
                tracing::error!(%error, "the applied policy is not on disk; a restart would run an older one");
                live.record_error(error);
            }
            applied
        }
        Ok(None) => Ok(Applied::Unchanged),
        Err(err) => Err(err),
    };
    match applied {
        Ok(Applied::Unchanged) => {
            tracing::debug!(version = ?live.version(), "policy already running");
            true
        }
        Ok(Applied::Swapped { previous }) => {
            let version = live.version();
            tracing::info!(
                version = %version_text(version),
                previous = %version_text(previous),
                "policy applied"
            );
            context.heartbeat_now.notify_one();
            true
        }
        Err(err) => {
            let refused = match &err {
                ApplyError::Malformed(_) => None,
                ApplyError::Invalid { .. }
                | ApplyError::Older { .. }
                | ApplyError::Signature(_) => offered,
            };
            if refused.is_some() {
                *context.refused.lock().unwrap_or_else(|p| p.into_inner()) = refused;
            }
            tracing::warn!(
                %err,
                running = %version_text(live.version()),
                "policy refused; the running policy stays"
            );
            context.heartbeat_now.notify_one();
            false
        }
    }
}

/// Starts or ends a shadow run; a refusal is logged and reported as the last error (the
/// enforced policy is not concerned).
fn on_shadow(context: &Context, event: &str, data: &str) {
    let live = &context.live;
    let result = if event == SHADOW_EVENT {
        serde_json::from_str::<ShadowEvent>(data)
            .map_err(|e| ApplyError::Malformed(format!("malformed `shadow` event: {e}")))
            .and_then(|shadow| {
                let number = shadow.shadow;
                live.start_shadow(shadow).map(|()| number)
            })
            .map(|number| tracing::info!(shadow = number, "shadow run started"))
    } else {
        serde_json::from_str::<ShadowEndEvent>(data)
            .map_err(|e| ApplyError::Malformed(format!("malformed `shadow_end` event: {e}")))
            .map(|end| {
                if live.end_shadow(end.shadow) {
                    tracing::info!(shadow = end.shadow, "shadow run ended");
                }
            })
    };
    match result {
        Ok(()) => context.heartbeat_now.notify_one(),
        Err(err) => {
            tracing::warn!(%err, "shadow event refused");
            live.record_error(err.to_string());
        }
    }
}

/// Saves `stored` to the state dir (atomically, fsynced), off the async workers.
async fn save(context: &Context, stored: &super::StoredPolicy) -> Result<(), String> {
    let store = context.store.clone();
    let stored = stored.clone();
    match tokio::task::spawn_blocking(move || store.save(&stored)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(join) => Err(format!("saving the policy failed: {join}")),
    }
}

/// Asks the server who this agent is until it answers (`GET /api/agents/me`), with the
/// stream's backoff; the heartbeat and the reports wait for the answer.
async fn identity_loop(context: Arc<Context>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(context.config.backoff);
    loop {
        let wait = match context.client.identity(&context.config.token).await {
            Ok(identity) => {
                tracing::info!(
                    agent = %identity.agent_id,
                    org = %identity.org_id,
                    hostname = %identity.hostname,
                    "the server knows this agent"
                );
                context
                    .live
                    .update_status(|s| s.agent_id = Some(identity.agent_id));
                return;
            }
            Err(err @ SyncError::Unauthorized { .. }) => {
                let wait = jitter(context.config.unauthorized_retry);
                tracing::error!(%err, retry_in = ?wait, "the server does not know this agent's token");
                context.live.record_error(err.to_string());
                wait
            }
            Err(err) => {
                let wait = backoff.next_delay();
                tracing::debug!(%err, retry_in = ?wait, "cannot ask the server who this agent is yet");
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn heartbeat_loop(context: Arc<Context>, mut shutdown: watch::Receiver<bool>) {
    let mut updates = context.live.subscribe();
    let agent_id = tokio::select! {
        status = updates.wait_for(|s| s.agent_id.is_some()) => match status {
            Ok(status) => status.agent_id.clone().unwrap_or_default(),
            Err(_) => return,
        },
        _ = shutdown.changed() => return,
    };
    drop(updates);
    let mut interval = tokio::time::interval(context.config.heartbeat_interval);
    let mut suspect = None;
    // Acks go only to a server that announced it reads them (the protocol's compatibility rule).
    let mut accepts_acks = false;
    // Shadow reports likewise only to a server that announced it reads them.
    let mut accepts_shadow = false;
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = context.heartbeat_now.notified() => {}
            _ = shutdown.changed() => return,
        }
        let status = context.live.status();
        let ack = context.live.ack().filter(|_| accepts_acks);
        let sent = context
            .client
            .heartbeat(
                &agent_id,
                &context.config.token,
                HeartbeatRequest {
                    policy_version: status.applied,
                    last_error: status.heartbeat_error(),
                    ack,
                    shadow: context.live.shadow_report().filter(|_| accepts_shadow),
                },
            )
            .await;
        match sent {
            Ok(reply) => {
                context
                    .live
                    .update_status(|s| s.last_contact = Some(Instant::now()));
                if reply.accepts_acks && !accepts_acks && status.ack.is_some() {
                    // The server reads acks: send the pending one now, not in a whole interval.
                    context.heartbeat_now.notify_one();
                }
                accepts_acks = reply.accepts_acks;
                accepts_shadow = reply.accepts_shadow;
                suspect = watch_stream(&context, &reply, status.applied, suspect);
            }
            Err(err @ SyncError::Unauthorized { .. }) => {
                let wait = jitter(context.config.unauthorized_retry);
                tracing::error!(%err, retry_in = ?wait, "heartbeat rejected: check the agent id and token");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
            }
            Err(err) => tracing::warn!(%err, "heartbeat failed"),
        }
    }
}

fn version_text(version: Option<PolicyVersion>) -> String {
    version.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

/// The stream watchdog, run on every heartbeat reply. A stream can look alive (the connection
/// is up, keep-alives arrive) and still deliver nothing: a proxy that holds back events, bytes
/// the SSE parser cannot get past. When two heartbeats in a row report the same newer version
/// and no policy event arrived in between, the stream is restarted; the server sends the
/// current policy first on every new stream. A version this agent refused does not count: a
/// reconnect would only bring it back.
fn watch_stream(
    context: &Context,
    reply: &HeartbeatReply,
    applied: Option<PolicyVersion>,
    suspect: Option<(PolicyVersion, u64)>,
) -> Option<(PolicyVersion, u64)> {
    let current = reply.current_policy_version?;
    let refused = *context.refused.lock().unwrap_or_else(|p| p.into_inner());
    if !reply.outdated || applied >= Some(current) || refused == Some(current) {
        return None;
    }
    let seen = (current, context.policy_events.load(Ordering::Relaxed));
    if suspect == Some(seen) {
        tracing::warn!(
            running = %version_text(applied),
            current = %current,
            "the event stream delivered nothing while the server has a newer policy; reconnecting"
        );
        context.resync.notify_waiters();
        return None;
    }
    tracing::debug!(running = %version_text(applied), current = %current, "the server has a newer policy");
    Some(seen)
}
