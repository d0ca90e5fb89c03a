//! The event path: one JSON line (or one event from any source) in, run through the live
//! engine at the clock's time, each action printed as the contract's action JSON and handed to
//! the dispatcher. Nothing here waits for the executor.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;

use super::dispatch::Dispatcher;
use super::metrics::AgentMetrics;
use super::report::Origin;
use crate::event::ThreatEvent;
use crate::sync::LiveEngine;

/// Counts of one event path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Lines read (blank ones included).
    pub lines: u64,
    /// Events run through the engine.
    pub events: u64,
    /// Lines skipped because they are not valid events.
    pub bad_lines: u64,
    /// Actions decided.
    pub actions: u64,
}

impl std::ops::AddAssign for PipelineStats {
    fn add_assign(&mut self, other: Self) {
        self.lines += other.lines;
        self.events += other.events;
        self.bad_lines += other.bad_lines;
        self.actions += other.actions;
    }
}

/// JSON line in, action out: the agent's event path, one per event source.
///
/// Built on its own ([`Pipeline::new`]) it only prints actions, which is what the agent
/// benchmark measures; inside an agent it also hands every action to the executor (off this
/// thread) and reports it.
///
/// ```
/// use policy_engine::agent::Pipeline;
/// use policy_engine::sync::LiveEngine;
/// use policy_engine::{EngineConfig, Policy, PolicyVersion};
/// let live = LiveEngine::new(EngineConfig::default());
/// let policy = Policy::from_json(br#"{"name":"p","rules":[{"type":"auto_respond","config":
///     {"trigger":"malware","action":"kill_process","minConfidence":0.5}}]}"#).unwrap();
/// live.apply(PolicyVersion::new(3), policy).unwrap();
/// let mut pipeline = Pipeline::new(live, Vec::new());
/// pipeline.line(br#"{"id":"e1","type":"malware","confidence":0.9,"pid":42}"#).unwrap();
/// pipeline.line(b"not json").unwrap();
/// assert_eq!(pipeline.stats().bad_lines, 1);
/// assert_eq!(
///     String::from_utf8(pipeline.into_output()).unwrap(),
///     "{\"action\":\"kill_process\",\"pid\":42,\"rule\":0,\"policyVersion\":\"v3\",\"eventId\":\"e1\"}\n"
/// );
/// ```
#[derive(Debug)]
pub struct Pipeline<W> {
    live: LiveEngine,
    dispatcher: Option<Dispatcher>,
    metrics: Option<AgentMetrics>,
    out: W,
    json: Vec<u8>,
    stats: PipelineStats,
}

impl<W: Write> Pipeline<W> {
    /// A pipeline from `live` that prints actions to `out` and executes nothing.
    pub fn new(live: LiveEngine, out: W) -> Self {
        Self {
            live,
            dispatcher: None,
            metrics: None,
            out,
            json: Vec::with_capacity(256),
            stats: PipelineStats::default(),
        }
    }

    /// A pipeline that also hands actions to `dispatcher` and counts into `metrics`.
    pub(crate) fn dispatching(
        live: LiveEngine,
        dispatcher: Dispatcher,
        metrics: AgentMetrics,
        out: W,
    ) -> Self {
        Self {
            dispatcher: Some(dispatcher),
            ..Self::new(live, out).with_metrics(metrics)
        }
    }

    /// Counts lines, events, skipped lines, evaluation time and matches into `metrics`.
    pub fn with_metrics(mut self, metrics: AgentMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Handles one line (without or with its newline). A bad line is logged with its number
    /// and skipped; only a failure to write the output is an error.
    pub fn line(&mut self, line: &[u8]) -> io::Result<()> {
        self.stats.lines += 1;
        if let Some(metrics) = &self.metrics {
            metrics.line();
        }
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        match ThreatEvent::from_json(line) {
            Ok(event) => self.event(&event),
            Err(err) => {
                self.stats.bad_lines += 1;
                if let Some(metrics) = &self.metrics {
                    metrics.skipped();
                }
                tracing::warn!("event line {}: {err}; skipped", self.stats.lines);
                Ok(())
            }
        }
    }

    /// Runs one event (from any source) through the engine at the clock's time; prints and
    /// dispatches its actions.
    pub fn event(&mut self, event: &ThreatEvent) -> io::Result<()> {
        self.stats.events += 1;
        let evaluation = match &self.metrics {
            Some(metrics) => {
                let started = Instant::now();
                let evaluation = self.live.process(event, Utc::now());
                metrics.evaluated(started.elapsed(), &evaluation.actions);
                evaluation
            }
            None => self.live.process(event, Utc::now()),
        };
        for diagnostic in &evaluation.diagnostics {
            tracing::debug!(line = self.stats.lines, %diagnostic, "rule diagnostic");
        }
        for record in evaluation.actions {
            self.stats.actions += 1;
            self.json.clear();
            serde_json::to_writer(&mut self.json, &record).map_err(io::Error::other)?;
            self.json.push(b'\n');
            self.out.write_all(&self.json)?;
            if let Some(dispatcher) = &self.dispatcher {
                dispatcher.execute(record, Origin::Local);
            }
        }
        Ok(())
    }

    /// Flushes the printed actions.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Counts so far.
    pub fn stats(&self) -> PipelineStats {
        self.stats
    }

    /// The output, for a pipeline that printed into a buffer.
    pub fn into_output(self) -> W {
        self.out
    }
}

/// The action output shared by the sources of one agent (each writes whole lines).
#[derive(Clone)]
pub(crate) struct SharedOutput(Arc<Mutex<Box<dyn Write + Send>>>);

impl SharedOutput {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self(Arc::new(Mutex::new(out)))
    }
}

impl std::fmt::Debug for SharedOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedOutput")
    }
}

impl Write for SharedOutput {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        // write_all of a whole line under one lock: lines of two sources never interleave.
        self.write_all(bytes).map(|()| bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}
