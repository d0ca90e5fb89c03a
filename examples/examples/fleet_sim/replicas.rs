//! The server replicas of a run: spawned here as processes of their own (this program run again
//! with `--serve`: the reference server's library in a process whose memory is the server's
//! alone), or given as URLs of servers running elsewhere.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reference_server::transport::limits::raise_nofile_limit;
use reference_server::transport::{AdmissionConfig, ConnectionLimits};
use reference_server::{Database, ServerConfig, TlsMode};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// What `--serve` runs.
#[derive(Debug, Clone)]
pub struct ServeArgs {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data dir (TLS material; SQLite without a database URL).
    pub data_dir: PathBuf,
    /// PostgreSQL URL, if any.
    pub database: Option<String>,
    /// Admin token.
    pub admin_token: String,
    /// New streams per second admitted.
    pub opens_per_sec: u32,
}

/// Runs one replica until stdin closes (the simulator ends or kills it).
pub fn serve(args: &ServeArgs) -> Result<()> {
    // Sized for the raised file limit, as the `reference-server` binary does: the defaults
    // (a 1,024 limit) would cap the fleet at 768 streams.
    let connections = ConnectionLimits::sized_for(raise_nofile_limit());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = reference_server::start(ServerConfig {
            listen: args.listen,
            data_dir: args.data_dir.clone(),
            tls: TlsMode::SelfSigned,
            admin_token: Some(args.admin_token.clone()),
            database: args
                .database
                .clone()
                .map_or(Database::Sqlite, Database::Postgres),
            // The simulator's agents queue every broadcast; a slow one is not dropped early.
            stream_queue: 64,
            connections,
            admission: AdmissionConfig {
                per_second: args.opens_per_sec,
                ..AdmissionConfig::default()
            },
            ..ServerConfig::default()
        })
        .await?;
        println!("listening on {}", server.base_url());
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(_)) = stdin.next_line().await {}
        server.shutdown().await;
        anyhow::Ok(())
    })
}

/// A replica process started by this simulator.
#[derive(Debug)]
pub struct Spawned {
    /// Its base URL.
    pub base: String,
    /// Its pid, for its memory.
    pub pid: u32,
    child: Child,
    args: ServeArgs,
}

impl Spawned {
    /// Starts a replica on a free loopback port (or `listen`) and waits until it listens.
    pub async fn start(args: ServeArgs) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command
            .arg("--serve")
            .arg("--listen")
            .arg(args.listen.to_string())
            .arg("--data-dir")
            .arg(&args.data_dir)
            .arg("--admin-token")
            .arg(&args.admin_token)
            .arg("--opens-per-sec")
            .arg(args.opens_per_sec.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if let Some(database) = &args.database {
            command.arg("--database").arg(database);
        }
        let mut child = command.spawn().context("cannot start a replica")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let base = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(base) = line.strip_prefix("listening on ") {
                    return anyhow::Ok(base.to_owned());
                }
            }
            bail!("the replica exited before listening")
        })
        .await
        .context("the replica did not start within 60 s")??;
        let pid = child.id().context("the replica has no pid")?;
        let listen: SocketAddr = base
            .trim_start_matches("https://")
            .parse()
            .context("the replica's address")?;
        Ok(Self {
            base,
            pid,
            child,
            args: ServeArgs { listen, ..args },
        })
    }

    /// Kills it (SIGKILL) and starts it again on the same address.
    pub async fn restart(&mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        let again = Self::start(self.args.clone()).await?;
        *self = again;
        Ok(())
    }
}

/// The data dir's self-signed certificate (PEM), which clients trust.
pub fn certificate_pem(data_dir: &Path) -> Result<Vec<u8>> {
    std::fs::read(data_dir.join("tls/cert.pem")).context("the replica's certificate")
}
