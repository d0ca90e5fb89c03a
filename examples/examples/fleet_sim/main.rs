//! `fleet_sim`: a fleet of simulated agents against one or several reference servers, each agent
//! on its own TLS connection with its SSE stream, heartbeats and reports, as the real agent
//! behaves (reconnects with `Last-Event-ID`, honours `Retry-After`, spreads its reconnects).
//! The streams are read by a minimal HTTP/1.1 reader (`sse.rs`: one task per stream) and the
//! requests sent with reqwest, so that simulating 10,000 agents takes as little as it can of
//! the cores the server runs on.
//!
//! It prints the broadcast latency to the last agent (p50/p99 over `--posts` broadcasts, with
//! heartbeats and reports running; with several replicas also from a POST to replica A to the
//! last agent on the others), heartbeat and report round trips,
//! errors, and the server's resident memory per connection when the servers are local (spawned
//! here, or named with `--server-pid`). For local servers it also prints the CPU time the
//! servers and the simulator spent from each POST to the last agent's frame (per thread
//! `schedstat`), and the wall time that CPU needs at least on the machine's cores: when that
//! is close to the broadcast's latency, the machine is saturated. Optionally it kills and
//! restarts a replica and times the reconnect storm.
//!
//! The measured broadcasts are steady state: heartbeats and reports start, run `--settle-secs`,
//! then `--warmup-posts` broadcasts go out, each printed on its own `warm-up broadcast` line
//! and left out of the figures. Before, the first broadcast went out at the very moment 10,000
//! request loops started, onto heaps, socket buffers and database caches not used since the
//! streams opened: on two PostgreSQL replicas the first two took 296 and 248 ms in one run
//! where the next 28 took 122-199 ms.
//!
//! ```text
//! cargo run --release -p examples --example fleet_sim -- --agents 10000
//! cargo run --release -p examples --example fleet_sim -- --agents 10000 --replicas 2 \
//!     --database postgres://postgres@127.0.0.1:5432/policy
//! .ci/with-postgres cargo run --release -p examples --example fleet_sim -- --agents 10000 \
//!     --replicas 2 --database-env POLICY_TEST_POSTGRES
//! cargo run --release -p examples --example fleet_sim -- --server https://host:8443 \
//!     --admin-token ... --ca ca.pem --agents 500
//! ```

mod agent;
mod frame;
mod replicas;
mod sse;
mod stamped;
mod stats;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Parser;
use examples::figure;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use agent::{Fleet, Identity, Load, Seen};
use replicas::{ServeArgs, Spawned};
use stats::{Samples, cpu_time, ms, rss_bytes};

/// A simulated fleet against reference servers.
#[derive(Debug, Parser)]
// A flag given twice takes its last value (`.ci/bench --smoke` appends smaller sizes).
#[command(args_override_self = true)]
struct Args {
    /// Simulated agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Local server replicas to start (several need --database).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// PostgreSQL URL for the local replicas (default: SQLite, one replica).
    #[arg(long)]
    database: Option<String>,
    /// Take --database from this environment variable (`.ci/with-postgres` sets
    /// POLICY_TEST_POSTGRES), so that a URL with a password is not on the command line.
    #[arg(long, conflicts_with = "database")]
    database_env: Option<String>,
    /// Servers running elsewhere instead of local replicas (repeat for several).
    #[arg(long = "server")]
    servers: Vec<String>,
    /// Admin token of --server.
    #[arg(long, env = "POLICY_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// CA certificate (PEM) the --server certificates chain to.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Pid of a --server on this machine, for its memory per connection (repeat per server).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Policies posted (to the first server) for the broadcast latency.
    #[arg(long, default_value_t = 20)]
    posts: u64,
    /// The broadcasts are spread over at least this many seconds, heartbeats and reports
    /// running meanwhile.
    #[arg(long, default_value_t = 10.0)]
    load_secs: f64,
    /// Broadcasts posted before the measured ones, each timed and printed on its own line but
    /// left out of the figures: the first broadcast after the fleet connected meets cold heaps,
    /// socket buffers and database caches on every process.
    #[arg(long, default_value_t = 1)]
    warmup_posts: u64,
    /// Seconds between the start of heartbeats and reports and the first broadcast: every
    /// simulated agent starts its request loop at that moment, which is the simulator's own
    /// burst, not a broadcast's cost.
    #[arg(long, default_value_t = 2.0)]
    settle_secs: f64,
    /// Seconds between heartbeats of one agent.
    #[arg(long, default_value_t = 30.0)]
    heartbeat_secs: f64,
    /// Seconds between reports of one agent (an executed action each: a busy fleet).
    #[arg(long, default_value_t = 600.0)]
    report_secs: f64,
    /// Longest random wait before an agent reconnects after its stream ended.
    #[arg(long, default_value_t = 5.0)]
    spread_secs: f64,
    /// New streams started per second while the fleet connects.
    #[arg(long, default_value_t = 2000)]
    connect_rate: u32,
    /// Streams a local replica admits per second (its --stream-opens-per-sec).
    #[arg(long, default_value_t = 2000)]
    opens_per_sec: u32,
    /// Worker threads of the simulator's own runtime (it shares the servers' cores when they
    /// are local: 1 and 2 measured the same on 2 cores, within the runs' spread).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Nice value (0-19) of the simulator's worker threads, where its simulated agents run
    /// (the thread that starts the local servers and posts the policies keeps its own, so the
    /// servers it starts do not inherit it). With local servers on the same cores, 19 leaves
    /// the cores to the servers while they fan a broadcast out, as agents on machines of their
    /// own would: the simulator then reads its sockets after the fan-out, so time broadcasts
    /// with `--receive-timestamps` (the kernel's receive time) and read its heartbeat round
    /// trips as upper bounds.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
    nice: i32,
    /// Also time each broadcast to the moment the kernel received it on the last agent's
    /// socket (`SO_TIMESTAMPNS`), before the simulator decrypted and parsed it: tells the
    /// server's delivery apart from the simulator's own lag (reading with `recvmsg` costs the
    /// simulator a little more per frame).
    #[arg(long)]
    receive_timestamps: bool,
    /// After the broadcasts, kill (SIGKILL) and restart the first local replica and time its
    /// agents' return.
    #[arg(long)]
    restart: bool,
    /// Where the local servers' data dir (SQLite database, TLS certificate) is made (default:
    /// the system's temporary dir). `/dev/shm` leaves the disk out of the figures: every
    /// policy POST waits for its commit's fsync, and a VM's disk can take hundreds of
    /// milliseconds for one.
    #[arg(long, conflicts_with = "servers")]
    work_dir: Option<PathBuf>,
    /// Internal: run one replica (what the simulator starts).
    #[arg(long, hide = true)]
    serve: bool,
    /// Internal (--serve): listen address.
    #[arg(long, hide = true, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Internal (--serve): data dir.
    #[arg(long, hide = true)]
    data_dir: Option<PathBuf>,
}

const ADMIN: &str = "fleet-sim-admin-token";

/// How long a request other than an event stream may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Raises the open-file limit to the hard limit: 10,000 agents are 10,000 sockets on each side.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
            eprintln!("cannot raise RLIMIT_NOFILE from {soft} to {hard}");
        }
    }
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if let Some(name) = &args.database_env {
        let url =
            std::env::var(name).with_context(|| format!("--database-env: `{name}` is not set"))?;
        args.database = Some(url);
    }
    if args.serve {
        let data_dir = args.data_dir.clone().context("--serve needs --data-dir")?;
        return replicas::serve(&ServeArgs {
            listen: args.listen,
            data_dir,
            database: args.database.clone(),
            admin_token: args.admin_token.clone().unwrap_or_else(|| ADMIN.to_owned()),
            opens_per_sec: args.opens_per_sec,
        });
    }
    if args.replicas > 1 && args.database.is_none() && args.servers.is_empty() {
        bail!(
            "--replicas {} needs --database postgres://... (replicas share PostgreSQL)",
            args.replicas
        );
    }
    raise_fd_limit();
    let nice = args.nice;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .on_thread_start(move || {
            // Linux: a thread's nice value is its own (`None`: the calling thread).
            if nice != 0 {
                if let Err(error) = rustix::process::setpriority_process(None, nice) {
                    eprintln!("cannot set the nice value {nice} of a worker thread: {error}");
                }
            }
        })
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

/// The servers of a run.
struct Servers {
    bases: Vec<String>,
    pids: Vec<u32>,
    spawned: Vec<Spawned>,
    admin: String,
    client: reqwest::Client,
    streams: sse::StreamClient,
    /// The local servers' data dir, removed when the run ends.
    data: Option<tempfile::TempDir>,
}

impl Servers {
    /// The first server: where policies are posted (replica A).
    fn first(&self) -> Result<&str> {
        self.bases.first().map(String::as_str).context("no server")
    }
}

async fn servers(args: &Args) -> Result<Servers> {
    let builder = || {
        reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(256)
            // Below the server's wait for the next request on a keep-alive connection (10 s):
            // a pooled connection the server is closing is not picked for a heartbeat.
            .pool_idle_timeout(Duration::from_secs(8))
            // No overall timeout: it would cut the event streams; requests set their own.
            .connect_timeout(Duration::from_secs(30))
    };
    if !args.servers.is_empty() {
        let mut client = builder();
        let mut pems = Vec::new();
        if let Some(ca) = &args.ca {
            let pem =
                std::fs::read(ca).with_context(|| format!("cannot read `{}`", ca.display()))?;
            client = client.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
            pems.push(pem);
        }
        return Ok(Servers {
            bases: args.servers.clone(),
            pids: args.server_pids.clone(),
            spawned: Vec::new(),
            admin: args
                .admin_token
                .clone()
                .context("--server needs --admin-token")?,
            client: client.build()?,
            streams: sse::StreamClient::new(&pems, args.receive_timestamps)?,
            data: None,
        });
    }
    let prefix = format!("fleet-sim-{}-", std::process::id());
    let mut data = tempfile::Builder::new();
    data.prefix(&prefix);
    let data = match &args.work_dir {
        Some(dir) => data
            .tempdir_in(dir)
            .with_context(|| format!("--work-dir {}", dir.display()))?,
        None => data.tempdir()?,
    };
    let mut spawned = Vec::new();
    for _ in 0..args.replicas.max(1) {
        // One data dir: one self-signed certificate, made by the first replica.
        spawned.push(
            Spawned::start(ServeArgs {
                listen: "127.0.0.1:0".parse()?,
                data_dir: data.path().to_path_buf(),
                database: args.database.clone(),
                admin_token: ADMIN.to_owned(),
                opens_per_sec: args.opens_per_sec,
            })
            .await?,
        );
    }
    let pem = replicas::certificate_pem(data.path())?;
    let client = builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .build()?;
    let streams = sse::StreamClient::new(&[pem], args.receive_timestamps)?;
    Ok(Servers {
        bases: spawned.iter().map(|s| s.base.clone()).collect(),
        pids: spawned.iter().map(|s| s.pid).collect(),
        spawned,
        admin: ADMIN.to_owned(),
        client,
        streams,
        data: Some(data),
    })
}

fn policy(n: u64) -> Value {
    json!({"name": format!("fleet sim {n}"), "rules": [
        {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": n,
         "duration": "24h", "scope": "host"}},
        {"type": "alert_threshold", "config": {"severity": "critical", "countPerHour": 5,
         "notifyChannels": ["telegram", "email"]}}
    ]})
}

/// Posts policy `n` to the first server; returns the version number it stored.
async fn post_policy(servers: &Servers, n: u64) -> Result<u64> {
    let response: Value = servers
        .client
        .post(format!("{}/api/policy", servers.first()?))
        .bearer_auth(&servers.admin)
        .json(&policy(n))
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await?
        .json()
        .await?;
    if response.get("ok") != Some(&Value::Bool(true)) {
        bail!("POST /api/policy failed: {response}");
    }
    response
        .pointer("/data/version")
        .and_then(Value::as_str)
        .and_then(|v| v.strip_prefix('v'))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("POST /api/policy: no version in {response}"))
}

/// Enrolls `count` agents, agent i on server i mod the number of servers (its token is known
/// there at once), 32 at a time.
async fn enroll(servers: &Servers, count: usize) -> Result<Vec<Identity>> {
    let mut identities = Vec::with_capacity(count);
    let mut index = 0;
    while index < count {
        let batch: Vec<usize> = (index..count.min(index + 32)).collect();
        let requests = batch.iter().map(|&i| {
            let base = servers
                .bases
                .get(i % servers.bases.len())
                .cloned()
                .unwrap_or_default();
            let request = servers
                .client
                .post(format!("{base}/api/agents/enroll"))
                .bearer_auth(&servers.admin)
                .json(&json!({"hostname": format!("sim-{i}")}))
                .timeout(REQUEST_TIMEOUT)
                .send();
            async move {
                let body: Value = request.await?.json().await?;
                let field = |name: &str| {
                    body.pointer(&format!("/data/{name}"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .with_context(|| format!("enroll: no {name} in {body}"))
                };
                let id = field("agentId")?;
                let token = field("token")?;
                anyhow::Ok(Identity {
                    index: i,
                    id,
                    token,
                    base,
                })
            }
        });
        for identity in futures_util::future::join_all(requests).await {
            identities.push(identity?);
        }
        index += batch.len();
    }
    Ok(identities)
}

/// The sum of `of` over the local servers' processes: none without local servers (remote ones
/// without `--server-pid`) or when one cannot be read.
fn local_total<T: std::iter::Sum>(pids: &[u32], of: impl Fn(u32) -> Option<T>) -> Option<T> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| of(pid)).sum()
}

async fn run(args: Args) -> Result<()> {
    let mut servers = servers(&args).await?;
    let n = args.agents;
    let replicas = servers.bases.len();
    // Read back on a worker thread: what --nice made of them.
    let nice = tokio::spawn(async { rustix::process::getpriority_process(None) })
        .await?
        .context("cannot read the nice value of a worker thread")?;
    println!(
        "fleet_sim: {n} agents, {replicas} server(s), {} cores, simulator worker threads at nice {nice}",
        std::thread::available_parallelism().map_or(0, |c| c.get()),
    );
    if let Some(data) = &servers.data {
        let database = match &args.database {
            Some(_) => "PostgreSQL",
            None => "SQLite",
        };
        println!("{database}; local data dir {}", data.path().display());
    }
    // The servers may hold policies already (a PostgreSQL database, remote servers): versions
    // are expected from the one this post stored on.
    let first = post_policy(&servers, 1).await?;
    let started = Instant::now();
    let identities = enroll(&servers, n).await?;
    println!(
        "enrolled {n} agents in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let baseline = local_total(&servers.pids, rss_bytes);
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<Seen>();
    let (load_on, busy_phase) = watch::channel(false);
    let load = Arc::new(Mutex::new(Load::default()));
    let fleet = Fleet {
        streams: servers.streams.clone(),
        client: servers.client.clone(),
        seen: seen_tx,
        load: load.clone(),
        busy_phase,
        heartbeat: Duration::from_secs_f64(args.heartbeat_secs),
        report: Duration::from_secs_f64(args.report_secs),
        spread: Duration::from_secs_f64(args.spread_secs),
    };
    let replica_of: Vec<usize> = (0..n).map(|i| i % replicas).collect();

    // Connect at --connect-rate, then wait for every agent's first policy.
    let started = Instant::now();
    let per_tick = (args.connect_rate as usize / 100).max(1);
    for chunk in identities.chunks(per_tick) {
        for identity in chunk {
            agent::spawn(identity.clone(), fleet.clone());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut versions: HashMap<usize, u64> = HashMap::new();
    let deadline =
        Instant::now() + Duration::from_secs(120) + Duration::from_secs((n / 100) as u64);
    while versions.values().filter(|&&v| v >= first).count() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, seen.recv()).await {
            Ok(Some(Seen::Policy { agent, version, .. })) => {
                versions.insert(agent, version);
            }
            Ok(Some(Seen::Opened { .. })) => {}
            _ => bail!(
                "only {} of {n} agents got their first policy",
                versions.len()
            ),
        }
    }
    println!(
        "connected {n} TLS SSE agents in {:.1} s ({} busy answers while connecting)",
        started.elapsed().as_secs_f64(),
        load.lock().map(|l| l.busy).unwrap_or_default()
    );
    // Idle streams: let the allocator settle, then the memory they cost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected = local_total(&servers.pids, rss_bytes);
    if let (Some(before), Some(after)) = (baseline, connected) {
        let per = after.saturating_sub(before) as f64 / n as f64 / 1024.0;
        println!(
            "server RSS: {:.1} MiB before the streams, {:.1} MiB with {n} idle streams: {per:.1} KiB per connection",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
        );
        figure(
            &format!("server memory per idle TLS SSE connection ({n} agents)"),
            format!("{per:.1} KiB"),
        );
    }
    if let Some(own) = rss_bytes(std::process::id()) {
        println!("simulator RSS: {:.1} MiB", own as f64 / 1048576.0);
    }

    // Broadcasts, with heartbeats and reports running (started, then settled).
    let _ = load_on.send(true);
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    let mut to_last = Samples::default();
    let mut to_other = Samples::default();
    let mut responses = Samples::default();
    let pace = Duration::from_secs_f64(args.load_secs / args.posts.max(1) as f64);
    let mut to_socket = Samples::default();
    let mut to_other_socket = Samples::default();
    let own_pid = std::process::id();
    let server_cpu = || local_total(&servers.pids, cpu_time);
    let mut cpu_servers = Samples::default();
    let mut cpu_simulator = Samples::default();
    for post in 1..=args.warmup_posts + args.posts {
        let cpu_before = (server_cpu(), cpu_time(own_pid));
        let sent = Instant::now();
        let sent_wall = SystemTime::now();
        let version = post_policy(&servers, post + 1).await?;
        let response = sent.elapsed();
        if version != first + post {
            bail!("expected v{}, the server stored v{version}", first + post);
        }
        let arrived = wait_for_version(&mut seen, &replica_of, version, sent, n).await?;
        let cpu_after = (server_cpu(), cpu_time(own_pid));
        if post <= args.warmup_posts {
            println!(
                "warm-up broadcast {post} of {} (not in the figures): POST -> last of {n} agents {:.1} ms",
                args.warmup_posts,
                arrived.last.as_secs_f64() * 1000.0
            );
            continue;
        }
        responses.push(response);
        to_last.push(arrived.last);
        if let (Some(before), Some(after)) = (cpu_before.0, cpu_after.0) {
            cpu_servers.push(after.saturating_sub(before));
        }
        if let (Some(before), Some(after)) = (cpu_before.1, cpu_after.1) {
            cpu_simulator.push(after.saturating_sub(before));
        }
        if let Some(other) = arrived.last_other {
            to_other.push(other);
        }
        if let Some(socket) = arrived
            .last_received
            .and_then(|at| at.duration_since(sent_wall).ok())
        {
            to_socket.push(socket);
        }
        if let Some(socket) = arrived
            .last_other_received
            .and_then(|at| at.duration_since(sent_wall).ok())
        {
            to_other_socket.push(socket);
        }
        // Pacing, not waiting for a condition: the load phase lasts --load-secs.
        tokio::time::sleep_until((sent + pace).into()).await;
    }
    let steady = load
        .lock()
        .map(|l| (l.errors, l.busy, l.reconnects))
        .unwrap_or_default();
    println!("POST /api/policy response: {}", responses.detail());
    println!("POST -> last of {n} agents: {}", to_last.detail());
    if cpu_servers.len() > 0 && cpu_simulator.len() > 0 {
        // CPU spent from each POST to the last agent's frame, heartbeats and reports included.
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let (servers_ms, simulator_ms) = (
            ms(cpu_servers.quantile(0.5)),
            ms(cpu_simulator.quantile(0.5)),
        );
        println!(
            "CPU from POST to last agent, p50 per broadcast: server{} {servers_ms:.1} ms{}, simulator {simulator_ms:.1} ms; \
             on {cores} cores that is at least {:.1} ms of wall time",
            if replicas == 1 { "" } else { "s" },
            if args.database.is_some() {
                " (PostgreSQL not counted)"
            } else {
                ""
            },
            (servers_ms + simulator_ms) / cores as f64
        );
    }
    if to_socket.len() > 0 {
        println!(
            "POST -> last of {n} agents' sockets (kernel receive time, before the simulator decrypts): {}",
            to_socket.detail()
        );
        figure(
            &format!(
                "policy broadcast to {n} TLS SSE agents, {replicas} replica(s) (POST -> the last agent's socket)"
            ),
            to_socket.summary(),
        );
    }
    figure(
        &format!(
            "policy broadcast to {n} TLS SSE agents, {replicas} replica{} (POST -> last agent)",
            if replicas == 1 { "" } else { "s" }
        ),
        to_last.summary(),
    );
    if replicas > 1 {
        let others = replica_of.iter().filter(|&&r| r != 0).count();
        println!(
            "POST to replica A -> last of {others} agents on the other replicas: {}",
            to_other.detail()
        );
        figure(
            &format!(
                "cross-replica push, {replicas} replicas on PostgreSQL (POST to A -> last of {others} agents on B)"
            ),
            to_other.summary(),
        );
        if to_other_socket.len() > 0 {
            println!(
                "POST to replica A -> last of {others} agents' sockets on the other replicas (kernel receive time): {}",
                to_other_socket.detail()
            );
            figure(
                &format!(
                    "cross-replica push, {replicas} replicas on PostgreSQL (POST to A -> the last socket of {others} agents on B)"
                ),
                to_other_socket.summary(),
            );
        }
    }

    let heartbeats = load
        .lock()
        .map(|l| l.heartbeats.clone())
        .unwrap_or_default();
    let reports = load.lock().map(|l| l.reports.clone()).unwrap_or_default();
    println!("heartbeats: {}", heartbeats.detail());
    println!("reports: {}", reports.detail());
    println!(
        "errors: {}, busy answers: {}, reconnects: {}",
        steady.0, steady.1, steady.2
    );
    let first_errors = load
        .lock()
        .map(|l| l.first_errors.clone())
        .unwrap_or_default();
    for error in &first_errors {
        println!("  error: {error}");
    }
    figure(
        &format!("errors with {n} agents streaming (connect, broadcasts, heartbeats, reports)"),
        steady.0,
    );
    if heartbeats.len() > 0 {
        figure(
            &format!("heartbeat round trip with {n} agents streaming"),
            heartbeats.summary(),
        );
    }

    if args.restart && !servers.spawned.is_empty() {
        restart_storm(
            &mut servers,
            &mut seen,
            &replica_of,
            &load,
            first + args.warmup_posts + args.posts + 1,
            n,
        )
        .await?;
    }
    Ok(())
}

/// When a version reached the fleet.
struct Arrived {
    /// From the POST to the last agent reading it.
    last: Duration,
    /// From the POST to the last agent on replicas other than the first reading it.
    last_other: Option<Duration>,
    /// When the kernel received it on the last agent's socket (`None` unless every agent's
    /// socket said).
    last_received: Option<SystemTime>,
    /// The same for the agents on replicas other than the first.
    last_other_received: Option<SystemTime>,
}

/// Waits until every agent got `version`, sent at `sent`.
async fn wait_for_version(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    replica_of: &[usize],
    version: u64,
    sent: Instant,
    n: usize,
) -> Result<Arrived> {
    let mut got: HashSet<usize> = HashSet::new();
    let mut last = sent;
    let mut last_other: Option<Instant> = None;
    let mut last_received: Option<SystemTime> = None;
    let mut last_other_received: Option<SystemTime> = None;
    let mut all_received = true;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, seen.recv()).await {
            Ok(Some(Seen::Policy {
                agent,
                version: v,
                at,
                received,
            })) if v == version => {
                if got.insert(agent) {
                    last = last.max(at);
                    let other = replica_of.get(agent).is_some_and(|&r| r != 0);
                    if other {
                        last_other = Some(last_other.map_or(at, |l| l.max(at)));
                    }
                    match received {
                        Some(received) => {
                            last_received = Some(later(last_received, received));
                            if other {
                                last_other_received = Some(later(last_other_received, received));
                            }
                        }
                        None => all_received = false,
                    }
                }
            }
            Ok(Some(_)) => {}
            _ => bail!("v{version} reached {} of {n} agents within 60 s", got.len()),
        }
    }
    Ok(Arrived {
        last: last - sent,
        last_other: last_other.map(|l| l - sent),
        last_received: last_received.filter(|_| all_received),
        last_other_received: last_other_received.filter(|_| all_received),
    })
}

fn later(known: Option<SystemTime>, at: SystemTime) -> SystemTime {
    known.map_or(at, |known| known.max(at))
}

/// Kills the first replica, restarts it, and times its agents' return; then a new version must
/// reach every agent.
async fn restart_storm(
    servers: &mut Servers,
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    replica_of: &[usize],
    load: &Arc<Mutex<Load>>,
    version: u64,
    n: usize,
) -> Result<()> {
    let on_first: HashSet<usize> = (0..n).filter(|&i| replica_of.get(i) == Some(&0)).collect();
    let before = load.lock().map(|l| (l.busy, l.errors)).unwrap_or_default();
    let killed = Instant::now();
    servers
        .spawned
        .first_mut()
        .context("no local replica")?
        .restart()
        .await?;
    servers.pids = servers.spawned.iter().map(|s| s.pid).collect();
    let restarted = killed.elapsed();
    let mut back: HashSet<usize> = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while back.len() < on_first.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, seen.recv()).await {
            Ok(Some(Seen::Opened { agent })) if on_first.contains(&agent) => {
                back.insert(agent);
            }
            Ok(Some(_)) => {}
            _ => {
                let (busy, errors) = load
                    .lock()
                    .map(|l| (l.busy - before.0, l.errors - before.1))
                    .unwrap_or_default();
                bail!(
                    "{} of {} agents came back within 120 s ({busy} busy answers, {errors} errors)",
                    back.len(),
                    on_first.len()
                )
            }
        }
    }
    let all_back = killed.elapsed();
    let (busy, errors) = load
        .lock()
        .map(|l| (l.busy - before.0, l.errors - before.1))
        .unwrap_or_default();
    println!(
        "restart: replica up again after {:.2} s; its {} agents all back after {:.2} s; \
         {busy} busy answers, {errors} refused requests while it was down",
        restarted.as_secs_f64(),
        on_first.len(),
        all_back.as_secs_f64()
    );
    figure(
        &format!(
            "reconnect storm: {} agents back on a killed and restarted replica",
            on_first.len()
        ),
        format!("{:.1} s, {busy} busy answers", all_back.as_secs_f64()),
    );
    let sent = Instant::now();
    let stored = post_policy(servers, version).await?;
    if stored != version {
        bail!("expected v{version} after the restart, the server stored v{stored}");
    }
    let arrived = wait_for_version(seen, replica_of, version, sent, n).await?;
    println!(
        "after the storm, v{version} reached all {n} agents in {:.1} ms",
        ms(arrived.last)
    );
    Ok(())
}
