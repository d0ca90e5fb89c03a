//! Embedding the engine in an agent: `cargo run --example embed`.
//!
//! The agent owns the clock and the I/O; the engine only turns `(event, now)` into actions.
//! Policy updates from the server are swapped in with `update_policy`, which keeps the counters
//! of unchanged rules.

use chrono::{TimeDelta, Utc};
use policy_engine::{Engine, EngineConfig, Policy, PolicyVersion, ThreatEvent};

fn main() -> anyhow::Result<()> {
    let policy = Policy::from_json(
        br#"{"name":"ssh","rules":[
          {"type":"block_ip","config":{"trigger":"brute_force","threshold":3,"duration":"24h","scope":"host"}},
          {"type":"auto_respond","config":{"trigger":"malware","action":"kill_process","minConfidence":0.9,"requireApproval":true}}
        ]}"#,
    )?;
    let mut engine = Engine::new(policy, PolicyVersion::new(1), EngineConfig::default());

    // In an agent these come from detectors, and `now` from the system clock.
    let start = Utc::now();
    let events = [
        r#"{"id":"e1","type":"brute_force","srcIp":"203.0.113.7"}"#,
        r#"{"id":"e2","type":"brute_force","srcIp":"::ffff:203.0.113.7"}"#,
        r#"{"id":"e3","type":"malware","pid":4242,"process":"xmrig","confidence":0.97}"#,
        r#"{"id":"e4","type":"brute_force","srcIp":"203.0.113.7"}"#,
    ];
    for (i, line) in events.iter().enumerate() {
        let event = ThreatEvent::from_json(line.as_bytes())?;
        let now = start + TimeDelta::seconds(i as i64);
        let evaluation = engine.process(&event, now);
        for action in &evaluation.actions {
            // Hand the action to an executor; here we print its wire form.
            println!("{}", serde_json::to_string(action)?);
        }
        for diagnostic in &evaluation.diagnostics {
            eprintln!("{diagnostic}");
        }
    }

    // The server pushed v2: the block_ip rule is unchanged, so its counts carry over.
    let v2 = Policy::from_json(
        br#"{"name":"ssh","rules":[
          {"type":"block_ip","config":{"trigger":"brute_force","threshold":3,"duration":"24h","scope":"host"}}
        ]}"#,
    )?;
    engine.update_policy(v2, PolicyVersion::new(2));
    let stats = engine.stats();
    println!(
        "policy {}: {} events, {} actions, {} tracked keys",
        engine.version(),
        stats.events,
        stats.actions.total(),
        stats.tracked_keys
    );
    Ok(())
}
