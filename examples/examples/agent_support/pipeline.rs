//! The agent's event path, shared by the `agent` example and its benchmark: one JSON line in,
//! parsed, run through the live engine at the clock's time, actions handed to the executor and
//! printed as the contract's action JSON.

use std::io::{self, Write};
use std::time::Duration;

use chrono::Utc;
use policy_engine::ThreatEvent;
use policy_engine::executor::{Executor, Outcome, RecordingExecutor};
use policy_engine::sync::LiveEngine;

/// An executor the agent can drive: [`Executor::execute`] for each action, plus periodic upkeep
/// (the plug-in point for real executors; see `HostExecutor::maintain`).
pub trait AgentExecutor: Executor + Send {
    /// Upkeep every few seconds; `unreachable_for` is the time since the server last answered.
    fn maintain(&mut self, unreachable_for: Duration) -> Vec<Outcome>;
    /// Whether outcomes are worth logging (a dry run's "would do" outcomes are not).
    fn acts(&self) -> bool;
    /// Lifts the block on `ip` (a fleet `unblock` event); executors without a firewall skip it.
    #[allow(
        dead_code,
        reason = "used by the agent's fleet handler, not by the benchmark"
    )]
    fn unblock(&mut self, ip: std::net::IpAddr) -> Outcome {
        Outcome::skipped(format!("no firewall to unblock `{ip}`"))
    }
}

impl AgentExecutor for RecordingExecutor {
    fn maintain(&mut self, _unreachable_for: Duration) -> Vec<Outcome> {
        // Only the printed lines matter in a dry run: drop the records so memory stays flat.
        self.take();
        Vec::new()
    }

    fn acts(&self) -> bool {
        false
    }
}

/// Counts of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct PipelineStats {
    /// Lines read (blank ones included).
    pub lines: u64,
    /// Events run through the engine.
    pub events: u64,
    /// Lines skipped because they are not valid events.
    pub bad_lines: u64,
    /// Actions handed to the executor.
    pub actions: u64,
}

/// JSON line in -> action out.
pub struct Pipeline<E, W> {
    live: LiveEngine,
    executor: E,
    out: W,
    json: Vec<u8>,
    /// Counts so far.
    pub stats: PipelineStats,
}

impl<E: AgentExecutor, W: Write> Pipeline<E, W> {
    /// A pipeline from `live` to `executor`, printing actions to `out`.
    pub fn new(live: LiveEngine, executor: E, out: W) -> Self {
        Self {
            live,
            executor,
            out,
            json: Vec::with_capacity(256),
            stats: PipelineStats::default(),
        }
    }

    /// Handles one line (without or with its newline). A bad line is reported on stderr with
    /// its number and skipped; only a failure to write the output is an error.
    pub fn line(&mut self, line: &[u8]) -> io::Result<()> {
        self.stats.lines += 1;
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let event = match ThreatEvent::from_json(line) {
            Ok(event) => event,
            Err(err) => {
                self.stats.bad_lines += 1;
                tracing::warn!("event line {}: {err}; skipped", self.stats.lines);
                return Ok(());
            }
        };
        self.event(&event)
    }

    /// Runs one event (from any source: JSON Lines, the sshd log source, ...) through the
    /// engine at the clock's time and hands its actions to the executor.
    pub fn event(&mut self, event: &ThreatEvent) -> io::Result<()> {
        self.stats.events += 1;
        let evaluation = self.live.process(event, Utc::now());
        for diagnostic in &evaluation.diagnostics {
            tracing::debug!(line = self.stats.lines, %diagnostic, "rule diagnostic");
        }
        for record in &evaluation.actions {
            self.stats.actions += 1;
            self.json.clear();
            serde_json::to_writer(&mut self.json, record).map_err(io::Error::other)?;
            self.json.push(b'\n');
            self.out.write_all(&self.json)?;
            let outcome = self.executor.execute(record);
            if self.executor.acts() {
                match &outcome {
                    Outcome::Failed { .. } => tracing::error!(%outcome, "action failed"),
                    _ => tracing::info!(%outcome, "action"),
                }
            }
        }
        Ok(())
    }

    /// Flushes the printed actions.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// An executor shared between the event loop and the upkeep thread.
pub struct Shared<E>(pub std::sync::Arc<std::sync::Mutex<E>>);

impl<E> Clone for Shared<E> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<E> Shared<E> {
    /// Shares `executor`.
    pub fn new(executor: E) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(executor)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, E> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<E: AgentExecutor> Executor for Shared<E> {
    fn execute(&self, record: &policy_engine::ActionRecord) -> Outcome {
        self.lock().execute(record)
    }
}

impl<E: AgentExecutor> AgentExecutor for Shared<E> {
    fn maintain(&mut self, unreachable_for: Duration) -> Vec<Outcome> {
        self.lock().maintain(unreachable_for)
    }

    fn acts(&self) -> bool {
        self.lock().acts()
    }

    fn unblock(&mut self, ip: std::net::IpAddr) -> Outcome {
        self.lock().unblock(ip)
    }
}
