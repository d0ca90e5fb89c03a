//! Firewall and isolation executors against real nftables, inside network namespaces made by
//! each test: an "attacker" namespace and an "agent" namespace joined by a veth pair.
#![cfg(all(feature = "executor", target_os = "linux"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod executor_common;

use std::time::{Duration, Instant};

use executor_common::*;
use policy_engine::executor::{Executor, HostConfig, HostExecutor, Outcome};
use policy_engine::{Action, PolicyDuration, Scope};

fn host(pair: &NetPair, state: &std::path::Path) -> HostExecutor {
    let config = HostConfig::new(state, vec![addr(MANAGEMENT, PORT)])
        .with_nft_command(pair.nft_command())
        .with_allowlist(vec![format!("{OTHER}/32").parse().unwrap()]);
    HostExecutor::open(config).unwrap()
}

fn block(executor: &mut HostExecutor, ip: &str, duration: &str) -> Outcome {
    executor.execute(&record(Action::BlockIp {
        ip: ip.parse().unwrap(),
        duration: duration.parse::<PolicyDuration>().unwrap(),
        scope: Scope::Host,
    }))
}

fn blocked(pair: &NetPair, from: &str, to: &str) -> bool {
    connect(&pair.attacker, from, addr(to, PORT)).is_err()
}

#[test]
fn block_ip_drops_the_attacker_and_lets_other_addresses_in() {
    let pair = NetPair::new();
    let state = tempfile::tempdir().unwrap();
    let _listener = listen(&pair.agent, PORT);
    let mut executor = host(&pair, state.path());
    assert!(
        !blocked(&pair, ATTACKER, AGENT),
        "attacker reaches the agent before any block"
    );
    assert!(!blocked(&pair, ATTACKER6, AGENT6));

    let outcome = block(&mut executor, ATTACKER, "1h");
    assert!(outcome.is_done(), "{outcome}");
    assert!(
        outcome
            .message()
            .starts_with("blocked `192.0.2.2` for 1h (until "),
        "{outcome}"
    );
    let outcome = block(
        &mut executor,
        &format!("::ffff:{ATTACKER6}").replace("::ffff:", ""),
        "permanent",
    );
    assert_eq!(outcome, Outcome::done("blocked `2001:db8::2` permanently"));

    assert!(blocked(&pair, ATTACKER, AGENT));
    assert!(blocked(&pair, ATTACKER6, AGENT6));
    assert!(
        !blocked(&pair, MANAGEMENT, AGENT),
        "another IPv4 address still connects"
    );
    assert!(
        !blocked(&pair, OTHER6, AGENT6),
        "another IPv6 address still connects"
    );

    let v4 = pair.set_elements("policy_engine", "blocked_v4");
    assert_eq!(v4.len(), 1);
    assert!(v4[ATTACKER].unwrap() >= 3599, "{v4:?}");
    let v6 = pair.set_elements("policy_engine", "blocked_v6");
    assert_eq!(v6[ATTACKER6], None, "permanent means no timeout");
}

#[test]
fn a_two_second_block_expires_in_the_kernel() {
    let pair = NetPair::new();
    let state = tempfile::tempdir().unwrap();
    let _listener = listen(&pair.agent, PORT);
    let mut executor = host(&pair, state.path());
    let start = Instant::now();
    assert!(block(&mut executor, ATTACKER, "2s").is_done());
    assert!(blocked(&pair, ATTACKER, AGENT));
    assert!(wait_until(Duration::from_secs(8), || !blocked(
        &pair, ATTACKER, AGENT
    )));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "unblocked after {waited:?}"
    );
    // The agent's own list forgets it too.
    assert!(executor.firewall().active().is_empty());
}

#[test]
fn re_blocking_extends_and_never_shortens() {
    let pair = NetPair::new();
    let state = tempfile::tempdir().unwrap();
    let _listener = listen(&pair.agent, PORT);
    let mut executor = host(&pair, state.path());
    let start = Instant::now();
    assert!(block(&mut executor, ATTACKER, "1s").is_done());
    let outcome = block(&mut executor, ATTACKER, "3s");
    assert!(
        outcome
            .message()
            .starts_with("extended the block of `192.0.2.2` by 3s (until "),
        "{outcome}"
    );
    assert_eq!(
        pair.set_elements("policy_engine", "blocked_v4")[ATTACKER],
        Some(3)
    );
    let outcome = block(&mut executor, ATTACKER, "1s");
    assert!(
        outcome
            .message()
            .starts_with("`192.0.2.2` is already blocked until ")
            && outcome.message().ends_with(", longer than 1s"),
        "{outcome}"
    );
    assert_eq!(
        pair.set_elements("policy_engine", "blocked_v4")[ATTACKER],
        Some(3)
    );

    // Still blocked well past the first block's second...
    while start.elapsed() < Duration::from_millis(2000) {
        assert!(
            blocked(&pair, ATTACKER, AGENT),
            "unblocked after {:?}",
            start.elapsed()
        );
    }
    // ...and released by the extended timeout.
    assert!(wait_until(Duration::from_secs(6), || !blocked(
        &pair, ATTACKER, AGENT
    )));
    assert!(start.elapsed() >= Duration::from_millis(2500));
}

#[test]
fn blocks_survive_a_flushed_ruleset_and_a_restart() {
    let pair = NetPair::new();
    let state = tempfile::tempdir().unwrap();
    let _listener = listen(&pair.agent, PORT);
    let mut executor = host(&pair, state.path());
    assert!(block(&mut executor, ATTACKER, "1h").is_done());
    assert!(block(&mut executor, ATTACKER6, "permanent").is_done());

    // Someone flushes the ruleset; the agent's periodic upkeep puts everything back.
    pair.nft(&["flush", "ruleset"]);
    assert!(
        !blocked(&pair, ATTACKER, AGENT),
        "the flush lifted the block"
    );
    assert_eq!(
        executor.maintain(Duration::ZERO),
        vec![Outcome::done("recreated the firewall table with 2 blocks")]
    );
    assert!(blocked(&pair, ATTACKER, AGENT));
    assert!(blocked(&pair, ATTACKER6, AGENT6));
    assert_eq!(
        executor.maintain(Duration::ZERO),
        vec![],
        "nothing to do the second time"
    );

    // Flush again and restart the agent: a new executor over the same state dir restores them,
    // with the remaining time, not a fresh hour.
    pair.nft(&["flush", "ruleset"]);
    drop(executor);
    let mut executor = host(&pair, state.path());
    assert!(blocked(&pair, ATTACKER, AGENT));
    assert!(blocked(&pair, ATTACKER6, AGENT6));
    let v4 = pair.set_elements("policy_engine", "blocked_v4");
    assert!((3590..3600).contains(&v4[ATTACKER].unwrap()), "{v4:?}");
    assert_eq!(
        pair.set_elements("policy_engine", "blocked_v6")[ATTACKER6],
        None
    );
    assert_eq!(executor.firewall().active().len(), 2);

    // A restart without a flush keeps the blocks in place (no unban/reban).
    drop(executor);
    let mut executor = host(&pair, state.path());
    assert!(blocked(&pair, ATTACKER, AGENT));
    assert!(
        executor
            .firewall()
            .unblock(ATTACKER.parse().unwrap())
            .unwrap()
    );
    assert!(!blocked(&pair, ATTACKER, AGENT));
    drop(executor);
    let mut executor = host(&pair, state.path());
    assert!(
        !blocked(&pair, ATTACKER, AGENT),
        "an unblock is remembered too"
    );
    assert_eq!(executor.firewall().active().len(), 1);
}

#[test]
fn management_loopback_and_allowlisted_addresses_are_refused() {
    let pair = NetPair::new();
    let state = tempfile::tempdir().unwrap();
    let _listener = listen(&pair.agent, PORT);
    let mut executor = host(&pair, state.path());
    assert_eq!(
        block(&mut executor, MANAGEMENT, "permanent"),
        Outcome::skipped("`192.0.2.10` is a management server address and is never blocked")
    );
    assert_eq!(
        block(&mut executor, "::ffff:192.0.2.10", "1h"),
        Outcome::skipped("`192.0.2.10` is a management server address and is never blocked")
    );
    assert_eq!(
        block(&mut executor, "127.0.0.1", "1h"),
        Outcome::skipped("`127.0.0.1` is a loopback address and is never blocked")
    );
    assert_eq!(
        block(&mut executor, OTHER, "1h"),
        Outcome::skipped(
            "`192.0.2.3` is in the allowlisted range `192.0.2.3/32` and is never blocked"
        )
    );
    assert!(!blocked(&pair, MANAGEMENT, AGENT));
    assert!(!blocked(&pair, OTHER, AGENT));
    assert!(pair.set_elements("policy_engine", "blocked_v4").is_empty());
}

#[test]
fn isolation_cuts_everything_but_the_management_server_until_released() {
    let pair = NetPair::new();
    let state = tempfile::tempdir().unwrap();
    let _agent_listener = listen(&pair.agent, PORT);
    // The management server (and any other service) listens on the attacker's side.
    let _server = listen(&pair.attacker, PORT);
    let executor = host(&pair, state.path());
    let agent_to = |ip: &str| connect(&pair.agent, AGENT, addr(ip, PORT)).is_ok();
    let loopback_ok = || connect(&pair.agent, "127.0.0.1", addr("127.0.0.1", PORT)).is_ok();
    assert!(agent_to(ATTACKER) && agent_to(MANAGEMENT));

    let outcome = executor.execute(&record(Action::IsolateHost { host: None }));
    assert_eq!(
        outcome,
        Outcome::done("isolated the host; only loopback and `192.0.2.10:7000` stay reachable")
    );
    assert!(
        agent_to(MANAGEMENT),
        "the management server stays reachable"
    );
    assert!(loopback_ok(), "loopback stays up");
    assert!(!agent_to(ATTACKER), "outbound traffic is cut");
    assert!(blocked(&pair, ATTACKER, AGENT), "inbound traffic is cut");
    assert!(
        blocked(&pair, MANAGEMENT, AGENT),
        "only the server's port is let through"
    );

    // Restarting the agent keeps the isolation; so does a flushed ruleset.
    drop(executor);
    let mut executor = host(&pair, state.path());
    assert!(!agent_to(ATTACKER));
    pair.nft(&["flush", "ruleset"]);
    assert!(agent_to(ATTACKER));
    assert_eq!(
        executor.maintain(Duration::ZERO),
        vec![
            Outcome::done("recreated the firewall table with 0 blocks"),
            Outcome::done("recreated the isolation table"),
        ]
    );
    assert!(!agent_to(ATTACKER));

    assert!(executor.isolation().release().unwrap());
    assert!(agent_to(ATTACKER) && agent_to(MANAGEMENT));
    assert!(!blocked(&pair, ATTACKER, AGENT));
    assert!(
        !executor.isolation().release().unwrap(),
        "a second release has nothing to do"
    );
}

#[test]
fn isolation_releases_itself_after_the_server_is_unreachable_for_long() {
    let pair = NetPair::new();
    let state = tempfile::tempdir().unwrap();
    let _server = listen(&pair.attacker, PORT);
    let mut config = HostConfig::new(state.path(), vec![addr(MANAGEMENT, PORT)])
        .with_nft_command(pair.nft_command());
    config.isolation.auto_release_after = Some(Duration::from_secs(600));
    let mut executor = HostExecutor::open(config).unwrap();
    assert!(
        executor
            .execute(&record(Action::IsolateHost { host: None }))
            .is_done()
    );
    assert_eq!(executor.maintain(Duration::from_secs(599)), vec![]);
    assert!(executor.isolation().is_isolated());
    assert_eq!(
        executor.maintain(Duration::from_secs(600)),
        vec![Outcome::done(
            "released the isolation: the management server was unreachable for 600s (limit 600s)"
        )]
    );
    assert!(!executor.isolation().is_isolated());
    assert!(connect(&pair.agent, AGENT, addr(ATTACKER, PORT)).is_ok());
}

#[test]
fn isolation_without_a_management_server_is_refused() {
    let pair = NetPair::new();
    let state = tempfile::tempdir().unwrap();
    let config = HostConfig::new(state.path(), vec![]).with_nft_command(pair.nft_command());
    let mut executor = HostExecutor::open(config).unwrap();
    assert_eq!(
        executor.execute(&record(Action::IsolateHost { host: None })),
        Outcome::skipped(
            "no management server is configured: isolating would cut the agent off for good"
        )
    );
    assert!(!executor.isolation().is_isolated());
}

#[test]
fn configuration_and_nft_errors_say_what_and_where() {
    let state = tempfile::tempdir().unwrap();
    let mut config = policy_engine::executor::FirewallConfig::new(state.path());
    config.table = "bad-name".into();
    assert_eq!(
        policy_engine::executor::Firewall::open(config.clone())
            .unwrap_err()
            .to_string(),
        "invalid nftables table name `bad-name`: use up to 64 letters, digits and `_`, starting with a letter"
    );
    config.table = "policy_engine".into();
    config.command = vec![
        "sh".into(),
        "-c".into(),
        "cat >/dev/null; echo 'Error: boom' >&2; exit 1".into(),
        "nft".into(),
    ];
    assert_eq!(
        policy_engine::executor::Firewall::open(config.clone())
            .unwrap_err()
            .to_string(),
        "`sh -c cat >/dev/null; echo 'Error: boom' >&2; exit 1 nft -f -` failed (exit status: 1): Error: boom"
    );
    config.command = vec!["/nonexistent/nft".into()];
    assert_eq!(
        policy_engine::executor::Firewall::open(config)
            .unwrap_err()
            .to_string(),
        "cannot run `/nonexistent/nft -f -`: No such file or directory (os error 2)"
    );
}
