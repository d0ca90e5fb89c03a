//! Issue 13's findings, each a regression test against the real binary over TLS on loopback:
//! held-open and slow connections, fleet blocks of addresses nobody may block, fanned-out alert
//! channels, unbounded reports, stream multiplication, unchecked `?org_id=`, log injection and
//! unlimited token guessing. Every loop is bounded and the limits are set low so that each test
//! takes seconds.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use crate::hostile_common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// A policy with a fleet block (rule 0), an alert (rule 1), a kill that needs approval (rule
/// 2) and a quarantine (rule 3).
fn policy() -> Value {
    json!({"name": "hostile", "rules": [
        {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 5,
         "duration": "24h", "scope": "fleet"}},
        {"type": "alert_threshold", "config": {"severity": "critical", "countPerHour": 5,
         "notifyChannels": ["telegram", "email"]}},
        {"type": "auto_respond", "config": {"trigger": "malware", "action": "kill_process",
         "minConfidence": 0.9, "requireApproval": true}},
        {"type": "auto_respond", "config": {"trigger": "dropper", "action": "quarantine_file",
         "minConfidence": 0.9}},
    ]})
}

fn fleet_block(ip: &str) -> Value {
    json!({"action": "block_ip", "ip": ip, "duration": "24h", "scope": "fleet",
           "rule": 0, "policyVersion": "v1"})
}

/// Finding 1: ~1,010 silent TCP connections made the server unreachable, and idle TCP and TLS
/// connections were held for a minute and more. Now: a cap per address and in total (closed
/// before TLS), a reserve only loopback `127.0.0.1` reaches (the operator), and the TLS
/// handshake, header-read and idle timeouts close what is held open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_1_silent_and_slow_connections_are_capped_and_closed() {
    let server = Server::start(&[
        "--max-connections",
        "50",
        "--max-connections-per-ip",
        "40",
        "--operator-connections",
        "4",
        "--tls-handshake-timeout-secs",
        "3",
        "--header-read-timeout-secs",
        "1",
        "--idle-timeout-secs",
        "2",
    ]);
    // 40 silent sockets from one address: its cap. The 41st is closed at once.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(tcp_from(ip("127.0.0.2"), server.addr).await);
    }
    let mut over = tcp_from(ip("127.0.0.2"), server.addr).await;
    assert!(
        closed_within(&mut over, Duration::from_secs(2))
            .await
            .is_some()
    );
    // 10 more from another address fill the total of 50; a third address is refused.
    for _ in 0..10 {
        held.push(tcp_from(ip("127.0.0.3"), server.addr).await);
    }
    let mut over = tcp_from(ip("127.0.0.4"), server.addr).await;
    assert!(
        closed_within(&mut over, Duration::from_secs(2))
            .await
            .is_some()
    );
    assert!(
        held.iter().all(still_open),
        "the held sockets are still open"
    );
    // The operator on 127.0.0.1 still gets in, through the reserve.
    let (status, body) = server.get("/api/agents", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The TLS handshake timeout closes every silent socket.
    for socket in &mut held {
        assert!(
            closed_within(socket, Duration::from_secs(10))
                .await
                .is_some(),
            "a silent socket outlived the handshake timeout"
        );
    }
    drop(held);
    // Room again for everyone.
    let other = server.client_from(ip("127.0.0.4"));
    let (status, body) = send(
        other.get(format!("{}/api/agents", server.base)),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Slowloris: a request head trickling in is cut off by the header-read timeout (1 s).
    let mut slow = server.tls_from(ip("127.0.0.5"), "http/1.1").await;
    slow.write_all(b"GET /api/agents HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = tokio::io::split(slow);
    let trickle = tokio::spawn(async move {
        for _ in 0..50 {
            if writer.write_all(b"X").await.is_err() || writer.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let closed = closed_within(&mut reader, Duration::from_secs(4)).await;
    assert!(closed.is_some(), "a slow request head was held for 4 s");
    assert!(started.elapsed() < Duration::from_secs(4));
    trickle.abort();

    // Between requests, HTTP/1 waits for the next head no longer than the header-read timeout.
    let mut keep_alive = server.tls_from(ip("127.0.0.5"), "http/1.1").await;
    let answer = http1_exchange(
        &mut keep_alive,
        &format!(
            "GET /api/agents HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ADMIN}\r\n\r\n"
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let closed = closed_within(&mut keep_alive, Duration::from_secs(4)).await;
    assert!(
        closed.is_some(),
        "an idle HTTP/1 connection was held for 4 s"
    );

    // An HTTP/2 connection that never opens a stream is closed by the idle timeout (2 s).
    let mut h2 = server.tls_from(ip("127.0.0.5"), "h2").await;
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let closed = closed_within(&mut h2, Duration::from_secs(6)).await;
    assert!(
        closed.is_some_and(|t| t >= Duration::from_millis(1500)),
        "idle HTTP/2 connection: {closed:?}"
    );
}

/// Finding 1, the other half: out of file descriptors (a soft limit of 96, caps set above it),
/// accept failed in a loop and logged 697 lines in 35 s. Now it backs off with one line per
/// 10 s, and serves again once the descriptors are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_1_out_of_descriptors_the_accept_loop_backs_off_and_recovers() {
    let server = Server::start_under(
        &["prlimit", "--nofile=96:96"],
        &[
            "--max-connections",
            "1000",
            "--operator-connections",
            "0",
            "--tls-handshake-timeout-secs",
            "60",
        ],
    );
    server.wait_log("exceed the open-file limit").await;
    let mut held = Vec::new();
    for _ in 0..120 {
        held.push(tcp_from(ip("127.0.0.2"), server.addr).await);
    }
    server.wait_log("accept failed; backing off").await;
    // Let it fail for a while: still one line.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lines = server
        .logs()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert_eq!(lines, 1, "{:?}", server.logs());
    drop(held);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let response = server
            .client
            .get(format!("{}/api/agents", server.base))
            .bearer_auth(ADMIN)
            .timeout(Duration::from_secs(3))
            .send()
            .await;
        if response.is_ok_and(|r| r.status() == StatusCode::OK) {
            break;
        }
        assert!(Instant::now() < deadline, "never served again");
    }
}

/// Finding 1, sizing: at a soft file limit of 300 (hard 1,024) the server raises the soft limit
/// to the hard one and sizes the default cap from it (1,024 - 256 kept - 32 operator reserve).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_1_the_open_file_limit_is_raised_and_the_caps_sized_from_it() {
    let server = Server::start_under(&["prlimit", "--nofile=300:1024"], &[]);
    let raised = server.wait_log("raised the open-file limit").await;
    assert!(raised.contains("from=300 to=1024"), "{raised}");
    let listening = server.wait_log("policy server listening").await;
    assert!(
        listening.contains("max_connections=736 max_per_address=256 operator_reserve=32"),
        "{listening}"
    );
}

/// Finding 1, HTTP/2: a connection that says nothing after its preface gets keep-alive pings
/// (`--h2-keep-alive-secs 1`), so a dead peer is noticed and its connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_1_http2_connections_get_keep_alive_pings() {
    use tokio::io::AsyncReadExt;
    let server = Server::start(&["--h2-keep-alive-secs", "1"]);
    let mut h2 = server.tls_from(ip("127.0.0.5"), "h2").await;
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let ping_after = loop {
        // Frames: 3 bytes length, 1 type, 1 flags, 4 stream id, then the payload.
        let mut at = 0;
        let mut ping = false;
        while let Some(header) = seen.get(at..at + 9) {
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            if header[3] == 0x6 && header[4] & 0x1 == 0 {
                ping = true;
            }
            at += 9 + length;
        }
        if ping {
            break started.elapsed();
        }
        let n = tokio::time::timeout(Duration::from_secs(5), h2.read(&mut buf))
            .await
            .expect("no ping within 5 s")
            .unwrap();
        assert!(n > 0, "closed before a ping");
        seen.extend_from_slice(&buf[..n]);
    };
    assert!(ping_after >= Duration::from_millis(900), "{ping_after:?}");
}

/// Finding 2: one agent could block loopback, the metadata service, broadcast, multicast, or
/// anything under a rule or version that does not exist, on every host of its org.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_2_fleet_blocks_are_checked_against_addresses_rules_and_versions() {
    let server = Server::start(&[
        "--never-block",
        "10.0.0.0/8",
        "--never-block",
        "2001:db8:ff::",
    ]);
    server.post_policy(policy()).await;
    let (a, a_token) = server.enroll("host-a").await;
    let (_b, b_token) = server.enroll("host-b").await;
    let mut a_events = server.events(&a_token).await;
    let mut b_events = server.events(&b_token).await;
    assert_eq!(a_events.next().await.unwrap().0, "policy");
    assert_eq!(b_events.next().await.unwrap().0, "policy");

    let never = |ip: &str, why: &str| {
        (
            fleet_block(ip),
            "ip",
            format!("`{ip}` is {why}; it is never blocked fleet-wide"),
        )
    };
    let mut cases = vec![
        never("127.0.0.1", "a loopback address"),
        never("::1", "a loopback address"),
        never("0.0.0.0", "the unspecified address"),
        never("::", "the unspecified address"),
        never("255.255.255.255", "the broadcast address"),
        never("169.254.169.254", "a link-local address"),
        never("224.0.0.1", "a multicast address"),
        never("ff02::1", "a multicast address"),
        never(
            "10.1.2.3",
            "in the server's never-block list (`10.0.0.0/8`)",
        ),
        never(
            "2001:db8:ff::",
            "in the server's never-block list (`2001:db8:ff::/128`)",
        ),
    ];
    // The host's own global addresses (e.g. its eth0): a block there would cut the server off.
    let own: Vec<String> = nix::ifaddrs::getifaddrs()
        .unwrap()
        .filter_map(|i| i.address.and_then(|a| a.as_sockaddr_in().map(|v4| v4.ip())))
        .filter(|v4| !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified())
        .map(|v4| v4.to_string())
        .collect();
    for address in &own {
        cases.push(never(address, "an address of the policy server"));
    }
    let mut bogus = fleet_block("203.0.113.9");
    bogus["policyVersion"] = json!("v999");
    cases.push((
        bogus,
        "policyVersion",
        "org `default` has no policy version `v999`".to_owned(),
    ));
    let mut bogus = fleet_block("203.0.113.9");
    bogus["rule"] = json!(7);
    cases.push((
        bogus,
        "rule",
        "policy version `v1` has no rule 7 (it has 4 rules)".to_owned(),
    ));
    let mut bogus = fleet_block("203.0.113.9");
    bogus["rule"] = json!(1);
    cases.push((
        bogus,
        "action",
        "rule 1 is `alert_threshold`, which cannot produce a fleet-scope `block_ip`".to_owned(),
    ));
    let mut bogus = fleet_block("203.0.113.9");
    bogus["duration"] = json!("permanent");
    cases.push((
        bogus,
        "duration",
        "rule 0 blocks for `24h`, not `permanent`".to_owned(),
    ));
    let refusals = cases.len();
    for (body, path, message) in cases {
        let (status, answer) = server.report(&a, &a_token, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(answer["error"]["path"], path, "{answer}");
        assert_eq!(answer["error"]["message"], message.as_str());
    }
    // A version that exists but was never sent to this agent (its stream was closed).
    drop(a_events);
    server.post_policy(policy()).await;
    assert_eq!(b_events.next().await.unwrap().1["version"], "v2");
    let mut unsent = fleet_block("203.0.113.9");
    unsent["policyVersion"] = json!("v2");
    let (status, answer) = server.report(&a, &a_token, unsent).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["path"], "policyVersion");
    assert_eq!(
        answer["error"]["message"],
        "policy version `v2` was not sent to this agent"
    );
    let refusals = refusals + 1;

    // The one real block is the first thing the other agent sees.
    let (status, answer) = server
        .report(&a, &a_token, fleet_block("203.0.113.7"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["data"]["broadcastedTo"], 1);
    let (event, data) = b_events.next().await.unwrap();
    assert_eq!(
        (event.as_str(), &data["ip"]),
        ("block", &json!("203.0.113.7"))
    );
    let (status, blocks) = server.get("/api/blocks", ADMIN).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(blocks["data"].as_array().unwrap().len(), 1, "{blocks}");
    // Each refusal is one audit entry.
    let refused = server
        .audit(&format!("agent={a}&action=block_ip&limit=100"))
        .await
        .into_iter()
        .filter(|e| e["outcome"] == "refused_by_server")
        .count();
    assert_eq!(refused, refusals);
}

/// A broadcast to many agents (more than the 16 remembered one row each) is remembered as one
/// row naming them: a recipient's report on it is checked as before, and an agent it did not
/// reach (no stream open) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_on_a_broadcast_to_many_agents_are_checked_against_its_recipients() {
    let server = Server::start(&[]);
    server.post_policy(policy()).await;
    let mut fleet = Vec::new();
    for i in 0..20 {
        let (id, token) = server.enroll(&format!("host-{i}")).await;
        let mut events = server.events(&token).await;
        assert_eq!(events.next().await.unwrap().0, "policy");
        fleet.push((id, token, events));
    }
    let (offline, offline_token) = server.enroll("host-offline").await;
    let created = server.post_policy(policy()).await;
    assert_eq!(created["broadcastedTo"], 20);
    for (_, _, events) in &mut fleet {
        assert_eq!(events.next().await.unwrap().1["version"], "v2");
    }
    let mut on_v2 = fleet_block("203.0.113.7");
    on_v2["policyVersion"] = json!("v2");
    let (status, answer) = server.report(&offline, &offline_token, on_v2.clone()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["path"], "policyVersion");
    assert_eq!(
        answer["error"]["message"],
        "policy version `v2` was not sent to this agent"
    );
    for (id, token, _) in [&fleet[0], &fleet[19]] {
        let (status, answer) = server.report(id, token, on_v2.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
}

/// Finding 3: one alert listing 2,000 channels wrote 2,000 audit rows and 2,000 log lines.
/// Channels must be the rule's own; a report naming others is refused with one audit entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_3_alert_channels_are_the_rules_own_and_a_refusal_is_one_audit_entry() {
    let server = Server::start(&[]);
    server.post_policy(policy()).await;
    let (a, a_token) = server.enroll("host-a").await;
    let mut events = server.events(&a_token).await;
    assert_eq!(events.next().await.unwrap().0, "policy");
    let channels: Vec<String> = (0..2000).map(|i| format!("c{i}")).collect();
    let alert = json!({"action": "alert", "severity": "critical", "count": 6,
                       "channels": channels, "rule": 1, "policyVersion": "v1"});
    let (status, answer) = server.report(&a, &a_token, alert).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["path"], "channels[0]");
    assert_eq!(
        answer["error"]["message"],
        "channel `c0` is not one of rule 1's channels (`telegram`, `email`)"
    );
    let twice = json!({"action": "alert", "severity": "critical", "count": 6,
                       "channels": ["email", "email"], "rule": 1, "policyVersion": "v1"});
    let (status, answer) = server.report(&a, &a_token, twice).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["path"], "channels[1]");
    assert_eq!(
        answer["error"]["message"],
        "channel `email` is listed twice"
    );
    let entries = server.audit(&format!("agent={a}&limit=1000")).await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(entries.iter().all(|e| e["outcome"] == "refused_by_server"));
    assert!(server.audit("action=notify").await.is_empty());

    let fine = json!({"action": "alert", "severity": "critical", "count": 6,
                      "channels": ["telegram", "email"], "rule": 1, "policyVersion": "v1"});
    let (status, answer) = server.report(&a, &a_token, fine).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["data"]["kind"], "alert");
}

/// Finding 4: 20,000 pending approvals from one agent in 6.4 s, 190 MB of reports in 1.5 s.
/// Now: pending approvals, reports per minute and report KiB per hour are per-agent quotas
/// answered 429 with `Retry-After`; a repeated `reportId` is answered without counting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_4_per_agent_quotas_answer_429_with_retry_after() {
    let server = Server::start(&[
        "--max-pending-approvals",
        "3",
        "--reports-per-minute",
        "12",
        "--report-kib-per-hour",
        "64",
    ]);
    server.post_policy(policy()).await;
    let mut agents = Vec::new();
    for name in ["approvals", "flood", "bytes"] {
        let (id, token) = server.enroll(name).await;
        let mut events = server.events(&token).await;
        assert_eq!(events.next().await.unwrap().0, "policy");
        agents.push((id, token, events));
    }

    // Pending approvals.
    let (a, a_token, _) = &agents[0];
    let request = |pid: u32| {
        json!({"action": "approval_request", "request": {"action": "kill_process", "pid": pid},
               "rule": 2, "policyVersion": "v1"})
    };
    for pid in 0..3 {
        let (status, answer) = server.report(a, a_token, request(pid)).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    let response = server
        .client
        .post(format!("{}/api/agents/{a}/reports", server.base))
        .bearer_auth(a_token)
        .json(&request(3))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "60");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        format!(
            "agent `{a}` has 3 pending approval requests, the most allowed; retry once an admin decided some"
        )
    );
    let (_, pending) = server.get("/api/approvals?status=pending", ADMIN).await;
    assert_eq!(pending["data"].as_array().unwrap().len(), 3);

    // Reports per minute; a resent report is answered and not counted.
    let (f, f_token, _) = &agents[1];
    let quarantine = |n: u32| {
        json!({"action": "quarantine_file", "path": format!("/tmp/x{n}"), "rule": 3,
               "policyVersion": "v1", "reportId": format!("q-{n}")})
    };
    let (status, first) = server.report(f, f_token, quarantine(0)).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let mut accepted = 1;
    let limited = loop {
        let response = server
            .client
            .post(format!("{}/api/agents/{f}/reports", server.base))
            .bearer_auth(f_token)
            .json(&quarantine(accepted))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            break response;
        }
        assert_eq!(response.status(), StatusCode::CREATED);
        accepted += 1;
        assert!(accepted <= 12, "no limit after 12 reports");
    };
    assert_eq!(accepted, 12);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "Retry-After: {retry}");
    let (status, again) = server.report(f, f_token, quarantine(0)).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again, first);

    // Stored bytes: 40 KiB fits the 64 KiB an hour, the next 40 do not.
    let (b, b_token, _) = &agents[2];
    let big = |n: u32| {
        json!({"action": "quarantine_file", "path": "/tmp/y", "rule": 3, "policyVersion": "v1",
               "eventId": format!("{n}{}", "e".repeat(40 * 1024))})
    };
    let (status, answer) = server.report(b, b_token, big(1)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let (status, answer) = server.report(b, b_token, big(2)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!(
                "agent `{b}` stored more than 64 KiB of reports in an hour; retry in "
            )),
        "{answer}"
    );
}

/// Finding 5: one agent token held 2,000 streams and `broadcastedTo` said 2000. Now a new
/// stream ends the agent's old one, and `broadcastedTo` counts agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_5_an_agent_has_one_stream_and_broadcasts_count_agents() {
    let server = Server::start(&[]);
    server.post_policy(policy()).await;
    let (_a, a_token) = server.enroll("host-a").await;
    let mut current = server.events(&a_token).await;
    assert_eq!(current.next().await.unwrap().0, "policy");
    for _ in 0..20 {
        let mut next = server.events(&a_token).await;
        assert_eq!(next.next().await.unwrap().0, "policy");
        assert!(current.next().await.is_none(), "the replaced stream ended");
        current = next;
    }
    let (_b, b_token) = server.enroll("host-b").await;
    let mut b_events = server.events(&b_token).await;
    assert_eq!(b_events.next().await.unwrap().0, "policy");
    let created = server.post_policy(policy()).await;
    assert_eq!(created["broadcastedTo"], 2);
    assert_eq!(current.next().await.unwrap().1["version"], "v2");
}

/// Finding 6: `POST /api/policy?org_id=` created the org `""`, `?org_id=..%2Fx%20y%0Az` the org
/// `../x y\nz`, and 300-character ids were taken. The query is now checked like a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_6_org_ids_in_the_query_are_checked_like_bodies() {
    let server = Server::start(&[]);
    let long = "o".repeat(300);
    let long_query = format!("orgId={long}");
    for (query, shown) in [
        ("org_id=", String::new()),
        ("org_id=..%2Fx%20y%0Az", "../x y\nz".to_owned()),
        (long_query.as_str(), long.clone()),
    ] {
        for (method, path, body) in [
            (Method::POST, "/api/policy", Some(policy())),
            (
                Method::POST,
                "/api/agents/enroll",
                Some(json!({"hostname": "h"})),
            ),
            (Method::GET, "/api/agents", None),
        ] {
            let (status, answer) = server
                .call(method, &format!("{path}?{query}"), Some(ADMIN), body)
                .await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
            let name = query.split('=').next().unwrap();
            assert_eq!(answer["error"]["path"], name);
            assert_eq!(
                answer["error"]["message"],
                format!("expected 1 to 64 letters, digits, `-`, `_` or `.`, found `{shown}`")
            );
        }
    }
    // Nothing was stored: the default org's first policy is v1, and the audit has only it.
    assert_eq!(server.post_policy(policy()).await["version"], "v1");
    let created = server.audit("action=policy_created").await;
    assert_eq!(created.len(), 1);
}

/// Finding 7: a newline in the agent's `approvalId` or the admin's `hostname` forged a whole
/// log line. Text logs escape user-controlled fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_7_a_newline_cannot_start_a_log_line() {
    let server = Server::start(&[]);
    let forged = "web-1\n2026-01-01T00:00:00.000000Z  INFO FORGED: admin token accepted";
    injection_attempts(&server, forged).await;
    let line = server.wait_log("enrolled agent").await;
    assert!(line.contains(r#"hostname="web-1\n2026"#), "{line}");
    assert!(
        server
            .logs()
            .iter()
            .all(|l| !l.contains("FORGED") || l.contains("enrolled agent")),
        "{:?}",
        server.logs()
    );
}

/// Finding 7 with `--log-format json`: every line is one JSON object, the hostname a field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_7_json_logs_are_one_object_per_line() {
    let server = Server::start(&["--log-format", "json"]);
    let forged = "web-1\n{\"level\":\"INFO\",\"message\":\"FORGED\"}";
    injection_attempts(&server, forged).await;
    server.wait_log("enrolled agent").await;
    let mut enrolled = 0;
    for line in server.logs() {
        let object: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        assert_ne!(object["message"], "FORGED", "{line}");
        if object["message"] == "enrolled agent" {
            assert_eq!(object["hostname"], forged);
            enrolled += 1;
        }
    }
    assert_eq!(enrolled, 1);
}

async fn injection_attempts(server: &Server, hostname: &str) {
    let (status, body) = server
        .post("/api/agents/enroll", ADMIN, json!({"hostname": hostname}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let agent = body["data"]["agentId"].as_str().unwrap().to_owned();
    let token = body["data"]["token"].as_str().unwrap().to_owned();
    server.post_policy(policy()).await;
    let mut events = server.events(&token).await;
    assert_eq!(events.next().await.unwrap().0, "policy");
    let outcome = json!({"action": "kill_process", "pid": 7, "rule": 2, "policyVersion": "v1",
                         "approvalId": "apr_1\nFORGED"});
    let (status, answer) = server.report(&agent, &token, outcome).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["path"], "approvalId");
}

/// Finding 8: 3,988 wrong tokens a second from one address, `BEARER` refused, the first of two
/// `Authorization` headers silently taken, a 3-character admin token accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_8_failed_auth_is_limited_and_the_header_is_read_strictly() {
    let output = std::process::Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            "abc",
            "--data-dir",
        ])
        .arg(std::env::temp_dir().join(format!("policy-short-token-{}", std::process::id())))
        .env_remove("POLICY_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "the admin token (POLICY_ADMIN_TOKEN or --admin-token) has 3 characters; it needs at least 16"
        ),
        "{stderr}"
    );

    let server = Server::start(&["--auth-failures-per-minute", "10"]);
    let attacker = server.client_from(ip("127.0.0.7"));
    let guess = |n: u32| {
        attacker
            .get(format!("{}/api/agents", server.base))
            .bearer_auth(format!("adm_guess_{n}"))
            .send()
    };
    for n in 0..10 {
        assert_eq!(guess(n).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    for n in 10..40 {
        let response = guess(n).await.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=6).contains(&retry), "Retry-After: {retry}");
    }
    // Another address is not affected, and a valid token from the limited one still works.
    let (status, _) = server.get("/api/agents", "wrong").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = send(
        attacker.get(format!("{}/api/agents", server.base)),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Audited once, not once per attempt.
    let entries = server.audit("action=auth_rate_limited").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["ip"], "127.0.0.7");

    for scheme in ["BEARER", "bearer", "BeArEr"] {
        let response = server
            .client
            .get(format!("{}/api/agents", server.base))
            .header("authorization", format!("{scheme} {ADMIN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{scheme}");
    }
    let (status, body) = send(
        server
            .client
            .get(format!("{}/api/agents", server.base))
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("authorization", "Bearer other"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["error"]["message"],
        "the `Authorization` header is given more than once"
    );
}

/// Alerts are acknowledged only with their deliveries queued in the same transaction, and
/// delivered after: a server killed (-9) while retrying a webhook that is down delivers the
/// alert once it runs again; the agent's resent report gets the same answer and queues nothing.
/// (Before, the delivery lived in a task spawned after the receipt was stored: a disconnect or
/// a crash in between lost the alert, and the resent report was answered without it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_acknowledged_is_delivered_even_after_a_crash() {
    let files = tempfile::Builder::new()
        .prefix(&format!("policy-hostile-notify-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let notify_config = |name: &str, addr: std::net::SocketAddr| {
        let path = files.path().join(name);
        let config = json!({
            "channels": {"ops": {"type": "webhook", "url": format!("http://{addr}/hook")}},
            "retry": {"attempts": 1000, "initialBackoffMs": 100, "maxBackoffMs": 100,
                      "timeoutMs": 1000}
        });
        std::fs::write(&path, config.to_string()).unwrap();
        path.to_str().unwrap().to_owned()
    };
    // Nobody listens on the first webhook address.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let first = Server::start(&["--notify-config", &notify_config("down.json", down)]);
    first
        .post_policy(json!({"name": "alerts", "rules": [
            {"type": "alert_threshold", "config": {"severity": "critical", "countPerHour": 5,
             "notifyChannels": ["ops"]}}]}))
        .await;
    let (a, a_token) = first.enroll("host-a").await;
    let mut events = first.events(&a_token).await;
    assert_eq!(events.next().await.unwrap().0, "policy");
    let alert = |count: u32, id: &str| {
        json!({"action": "alert", "severity": "critical", "count": count, "channels": ["ops"],
               "rule": 0, "policyVersion": "v1", "reportId": id})
    };
    let (status, answer) = first.report(&a, &a_token, alert(6, "alert-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["data"]["notified"], json!(["ops"]));
    first.wait_log("alert delivery failed").await;
    assert!(first.audit("action=notify").await.is_empty());
    let dir = first.dir.clone();
    drop(events);
    drop(first); // SIGKILL while the delivery is being retried

    let sink = WebhookSink::start().await;
    let second = Server::start_in(
        dir,
        &[],
        &["--notify-config", &notify_config("up.json", sink.addr)],
    );
    let hooks = sink.wait_for(1).await;
    assert_eq!(hooks[0]["channel"], "ops", "{hooks:?}");
    assert_eq!(hooks[0]["agentId"], a.as_str());
    assert_eq!(hooks[0]["hostname"], "host-a");
    assert_eq!(hooks[0]["alert"]["count"], 6);
    // The agent resends the report whose answer it may not have seen: the same answer, nothing
    // queued again. A new alert is delivered once.
    let (status, again) = second.report(&a, &a_token, alert(6, "alert-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again, answer);
    let (status, next) = second.report(&a, &a_token, alert(7, "alert-2")).await;
    assert_eq!(status, StatusCode::CREATED, "{next}");
    let deadline = Instant::now() + DEADLINE;
    let delivered = loop {
        let entries = second.audit("action=notify").await;
        if entries.len() >= 2 {
            break entries;
        }
        assert!(Instant::now() < deadline, "{entries:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    assert!(
        delivered
            .iter()
            .all(|e| e["outcome"] == "delivered" && e["detail"]["attempts"] == 1),
        "{delivered:?}"
    );
    let counts: Vec<Value> = sink
        .received()
        .iter()
        .map(|h| h["alert"]["count"].clone())
        .collect();
    assert_eq!(counts, vec![json!(6), json!(7)]);
}
