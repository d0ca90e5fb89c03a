//! Fleet loop end to end over real TLS: agent reports, fleet blocks pushed to the other agents'
//! streams, approvals, alert deliveries to a local webhook receiver, a local Telegram stand-in
//! and a local SMTP sink, and the audit trail.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::http_sink::HttpSink;
use crate::common::*;
use reference_server::ServerConfig;
use reference_server::notify::NotifyConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// The policy of these tests: fleet blocks of four durations (rules 0, 3, 4, 5), an alert,
/// a kill that needs approval and one that does not (reports are checked against the rule
/// that produced them).
fn fleet_policy() -> Value {
    let block = |duration: &str| {
        json!({"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 5,
               "duration": duration, "scope": "fleet"}})
    };
    json!({"name": "fleet", "rules": [
        block("24h"),
        {"type": "alert_threshold", "config": {"severity": "critical", "countPerHour": 5,
         "notifyChannels": ["ops", "telegram", "email"]}},
        {"type": "auto_respond", "config": {"trigger": "malware", "action": "kill_process",
         "minConfidence": 0.9, "requireApproval": true}},
        block("1h"),
        block("48h"),
        block("permanent"),
        {"type": "auto_respond", "config": {"trigger": "miner", "action": "kill_process",
         "minConfidence": 0.9}},
    ]})
}

/// A fleet block report from the rule of [`fleet_policy`] with that duration.
fn fleet_block(ip: &str, duration: &str) -> Value {
    let rule = match duration {
        "24h" => 0,
        "1h" => 3,
        "48h" => 4,
        "permanent" => 5,
        other => panic!("no fleet rule blocks for {other}"),
    };
    json!({"action": "block_ip", "ip": ip, "duration": duration, "scope": "fleet",
           "rule": rule, "policyVersion": "v1", "eventId": "e-1"})
}

async fn report(t: &TestServer, agent: &str, token: &str, body: Value) -> Value {
    let (status, answer) = t
        .post(&format!("/api/agents/{agent}/reports"), token, body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer["data"].clone()
}

async fn audit(t: &TestServer, query: &str) -> Value {
    let (status, body) = t.get(&format!("/api/audit{query}"), ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].clone()
}

async fn fleet_server(make: impl Fn(&std::path::Path) -> ServerConfig) -> TestServer {
    let dir = tempfile::Builder::new()
        .prefix(&format!("policy-fleet-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    TestServer::start_in(dir, make).await
}

#[tokio::test]
async fn a_fleet_block_reaches_the_other_agents_collapses_duplicates_and_can_be_lifted() {
    let t = TestServer::start(true).await;
    t.post_policy(ADMIN, fleet_policy()).await;
    let (a, a_token) = t.enroll(ADMIN, "host-a").await;
    let (b, b_token) = t.enroll(ADMIN, "host-b").await;
    let (c, c_token) = t.enroll(ADMIN, "host-c").await;
    let mut streams = Vec::new();
    for token in [&a_token, &b_token, &c_token] {
        let mut stream = t.stream(token, "default").await;
        assert_eq!(stream.next_event().await.event, "policy");
        streams.push(stream);
    }

    let answer = report(&t, &a, &a_token, fleet_block("203.0.113.7", "24h")).await;
    assert_eq!(answer["kind"], "fleet_block");
    assert_eq!(answer["changed"], true);
    assert_eq!(answer["broadcastedTo"], 2);
    assert_eq!(answer["block"]["ip"], "203.0.113.7");
    assert_eq!(answer["block"]["agentId"], a.as_str());
    assert_timestamp(&answer["block"]["expiresAt"]);
    for stream in &mut streams[1..] {
        let event = stream.next_event().await;
        assert_eq!(event.event, "block");
        assert_eq!(event.data["ip"], "203.0.113.7");
        assert_eq!(event.data["sourceAgent"], a.as_str());
        assert_eq!(event.data["expiresAt"], answer["block"]["expiresAt"]);
        let action = &event.data["action"];
        assert_eq!(action["action"], "block_ip");
        assert_eq!(action["scope"], "host");
        assert_eq!(action["rule"], 0);
        assert_eq!(action["policyVersion"], "v1");
        let secs: u64 = action["duration"]
            .as_str()
            .unwrap()
            .strip_suffix('s')
            .unwrap()
            .parse()
            .unwrap();
        assert!((86_390..=86_400).contains(&secs), "{action}");
    }

    // A shorter duplicate only counts; a longer one extends and reaches everyone else,
    // including the first reporter (whose next event is this one: it never got its own).
    // `::ffff:203.0.113.7` is the same address (it was stored as a second block).
    let answer = report(&t, &b, &b_token, fleet_block("::ffff:203.0.113.7", "1h")).await;
    assert_eq!(
        (answer["changed"].clone(), answer["broadcastedTo"].clone()),
        (json!(false), json!(0))
    );
    let answer = report(&t, &c, &c_token, fleet_block("203.0.113.7", "48h")).await;
    assert_eq!(
        (answer["changed"].clone(), answer["broadcastedTo"].clone()),
        (json!(true), json!(2))
    );
    for stream in &mut streams[..2] {
        let event = stream.next_event().await;
        assert_eq!(event.event, "block");
        assert_eq!(event.data["sourceAgent"], c.as_str());
    }
    let (status, list) = t.get("/api/blocks", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["data"][0]["reports"], 3);
    assert_eq!(list["data"][0]["duration"], "48h");
    assert_eq!(list["data"][0]["agentId"], c.as_str());
    assert_eq!(list["data"][0]["permanent"], false);

    // A permanent block elsewhere; an agent connecting later gets both after its policy.
    report(&t, &a, &a_token, fleet_block("2001:db8::1", "permanent")).await;
    for stream in &mut streams[1..] {
        assert_eq!(stream.next_event().await.data["ip"], "2001:db8::1");
    }
    let (_d, d_token) = t.enroll(ADMIN, "host-d").await;
    let mut late = t.stream(&d_token, "default").await;
    assert_eq!(late.next_event().await.event, "policy");
    let mut ips = Vec::new();
    for _ in 0..2 {
        let event = late.next_event().await;
        assert_eq!(event.event, "block");
        ips.push(event.data["ip"].as_str().unwrap().to_owned());
        if event.data["ip"] == "2001:db8::1" {
            assert_eq!(event.data["action"]["duration"], "permanent");
            assert_eq!(event.data["expiresAt"], Value::Null);
        }
    }
    ips.sort();
    assert_eq!(ips, vec!["2001:db8::1", "203.0.113.7"]);

    // Lifting reaches every agent, the reporter included.
    let (status, body) = t
        .call(Method::DELETE, "/api/blocks/2001:db8::1", Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["broadcastedTo"], 4);
    for stream in streams.iter_mut().chain(std::iter::once(&mut late)) {
        let event = stream.next_event().await;
        assert_eq!(event.event, "unblock");
        assert_eq!(event.data, json!({"ip": "2001:db8::1", "by": "admin"}));
    }
    let (status, body) = t
        .call(Method::DELETE, "/api/blocks/2001:db8::1", Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        body["error"]["message"],
        "no fleet block on `2001:db8::1` in org `default`"
    );
    let (status, body) = t
        .call(Method::DELETE, "/api/blocks/not-an-ip", Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["message"], "`not-an-ip` is not an IP address");
    let (status, body) = t
        .call(
            Method::DELETE,
            "/api/blocks/203.0.113.7",
            Some(&a_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Who blocked 203.0.113.7, under which rule and version? (Either form finds every report.)
    assert_eq!(
        audit(&t, "?ip=::ffff:203.0.113.7&action=block_ip").await,
        audit(&t, "?ip=203.0.113.7&action=block_ip").await
    );
    let page = audit(&t, "?ip=203.0.113.7&action=block_ip").await;
    let who: Vec<(String, String)> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["policyVersion"], "v1");
            assert_eq!(e["outcome"], "executed");
            (
                e["agentId"].as_str().unwrap().to_owned(),
                e["detail"]["fleet"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        who,
        vec![
            (c.clone(), "stored".to_owned()),
            (b.clone(), "duplicate".to_owned()),
            (a.clone(), "stored".to_owned()),
        ]
    );
    let page = audit(&t, "?action=unblock").await;
    assert_eq!(page["entries"][0]["ip"], "2001:db8::1");
    assert_eq!(page["entries"][0]["actor"], "admin");
    let page = audit(&t, "?action=policy_created").await;
    assert_eq!(page["entries"][0]["policyVersion"], "v1");
}

#[tokio::test]
async fn approvals_are_approved_once_denied_or_expired_and_replays_are_refused() {
    let t = fleet_server(|dir| ServerConfig {
        approval_ttl: Duration::from_millis(1500),
        approval_sweep: Duration::from_millis(50),
        ..config(dir, true)
    })
    .await;
    t.post_policy(ADMIN, fleet_policy()).await;
    let (a, a_token) = t.enroll(ADMIN, "host-a").await;
    let (_b, b_token) = t.enroll(ADMIN, "host-b").await;
    let mut a_stream = t.stream(&a_token, "default").await;
    let mut b_stream = t.stream(&b_token, "default").await;
    assert_eq!(a_stream.next_event().await.event, "policy");
    assert_eq!(b_stream.next_event().await.event, "policy");

    let request = |pid: u32| {
        json!({"action": "approval_request", "request": {"action": "kill_process", "pid": pid},
               "rule": 2, "policyVersion": "v1", "eventId": format!("e-{pid}")})
    };
    let first = report(&t, &a, &a_token, request(4242)).await;
    assert_eq!(first["kind"], "approval_request");
    assert_eq!(first["approval"]["status"], "pending");
    let first_id = first["approval"]["id"].as_str().unwrap().to_owned();
    let second = report(&t, &a, &a_token, request(4343)).await;
    let second_id = second["approval"]["id"].as_str().unwrap().to_owned();
    let (status, list) = t.get("/api/approvals?status=pending", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");

    let (status, body) = t
        .post(
            &format!("/api/approvals/{first_id}/approve"),
            &a_token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = t
        .post(
            &format!("/api/approvals/{first_id}/approve"),
            ADMIN,
            json!({"reason": "confirmed miner"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "approved");
    assert_eq!(body["data"]["broadcastedTo"], 1);
    assert_eq!(body["data"]["decidedBy"], "admin");
    let event = a_stream.next_event().await;
    assert_eq!(event.event, "approval");
    assert_eq!(event.data["approvalId"], first_id.as_str());
    assert_eq!(
        event.data["action"],
        json!({"action": "kill_process", "pid": 4242, "rule": 2, "policyVersion": "v1", "eventId": "e-4242"})
    );
    // A replayed approval is refused.
    let (status, body) = t
        .call(
            Method::POST,
            &format!("/api/approvals/{first_id}/approve"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body["error"]["message"],
        format!("approval `{first_id}` is approved, not pending")
    );
    let (status, body) = t
        .call(
            Method::POST,
            &format!("/api/approvals/{second_id}/deny"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "denied");
    let (status, _) = t
        .call(
            Method::POST,
            "/api/approvals/apr_nope/approve",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The agent reports the execution; the approval is done.
    let outcome = report(
        &t,
        &a,
        &a_token,
        json!({"action": "kill_process", "pid": 4242, "rule": 2, "policyVersion": "v1",
               "approvalId": first_id, "outcome": "executed"}),
    )
    .await;
    assert_eq!(outcome["kind"], "approval_outcome");
    let (_, list) = t.get("/api/approvals?status=executed", ADMIN).await;
    assert_eq!(list["data"][0]["id"], first_id.as_str());

    // Nobody decides the third one: it expires, is recorded, and cannot be approved after.
    let third = report(&t, &a, &a_token, request(4444)).await;
    let third_id = third["approval"]["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, list) = t.get("/api/approvals?status=expired", ADMIN).await;
        if list["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == third_id.as_str())
        {
            break;
        }
        assert!(Instant::now() < deadline, "never expired: {list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = t
        .call(
            Method::POST,
            &format!("/api/approvals/{third_id}/approve"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body["error"]["message"],
        format!("approval `{third_id}` is expired, not pending")
    );
    let page = audit(&t, &format!("?agent={a}")).await;
    let actions: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec![
            "approval_expired",
            "approval_request",
            "kill_process",
            "approval_denied",
            "approval_approved",
            "approval_request",
            "approval_request",
        ]
    );
    // Agent b saw none of it.
    let (_, body) = t
        .post(
            &format!("/api/agents/{a}/reports"),
            &a_token,
            fleet_block("198.51.100.1", "1h"),
        )
        .await;
    assert_eq!(body["data"]["broadcastedTo"], 1);
    assert_eq!(b_stream.next_event().await.event, "block");
}

#[tokio::test]
async fn alerts_reach_the_webhook_telegram_and_smtp_sink_with_retries() {
    let http = HttpSink::start(1).await;
    let smtp = SmtpSink::start().await;
    let notify: NotifyConfig = serde_json::from_value(json!({
        "channels": {
            "ops": {"type": "webhook", "url": format!("http://{}/hook?key=WEBHOOK-SECRET", http.addr)},
            "telegram": {"type": "telegram", "botToken": "123:BOT-SECRET", "chatId": "-100",
                         "baseUrl": format!("http://{}", http.addr)},
            "email": {"type": "email", "host": "127.0.0.1", "port": smtp.port, "tls": "none",
                      "from": "policy@example.test", "to": ["soc@example.test"],
                      "username": "u", "password": "SMTP-SECRET"}
        },
        "retry": {"attempts": 3, "initialBackoffMs": 10, "maxBackoffMs": 50, "timeoutMs": 5000}
    }))
    .unwrap();
    let t = fleet_server(move |dir| ServerConfig {
        notify: Some(notify.clone()),
        ..config(dir, true)
    })
    .await;

    // A policy naming a channel the server does not have is refused where it names it.
    let mut policy = block_ip_policy("ssh", 5);
    policy["rules"][1]["config"]["notifyChannels"] = json!(["telegram", "pager"]);
    let (status, body) = t.post("/api/policy", ADMIN, policy).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["path"], "rules[1].config.notifyChannels[1]");
    assert_eq!(
        body["error"]["message"],
        "unknown notification channel `pager`; configured channels: `email`, `ops`, `telegram`"
    );
    t.post_policy(ADMIN, fleet_policy()).await;

    let (a, a_token) = t.enroll(ADMIN, "host-a").await;
    let stream = t.stream(&a_token, "default").await;
    // A channel the rule does not name is refused, and nothing is delivered.
    let (status, body) = t
        .post(
            &format!("/api/agents/{a}/reports"),
            &a_token,
            json!({"action": "alert", "severity": "critical", "count": 6,
                   "channels": ["ops", "telegram", "email", "pager"], "rule": 1, "policyVersion": "v1"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["path"], "channels[3]");
    assert_eq!(
        body["error"]["message"],
        "channel `pager` is not one of rule 1's channels (`ops`, `telegram`, `email`)"
    );
    let answer = report(
        &t,
        &a,
        &a_token,
        json!({"action": "alert", "severity": "critical", "count": 6,
               "channels": ["ops", "telegram", "email"], "rule": 1, "policyVersion": "v1"}),
    )
    .await;
    stream.close();
    assert_eq!(answer["kind"], "alert");
    assert_eq!(answer["notified"], json!(["ops", "telegram", "email"]));
    let text = answer.to_string();
    assert!(!text.contains("SECRET"), "{text}");

    // The webhook failed once (503) and was retried; the delivery is in the audit.
    let deadline = Instant::now() + DEADLINE;
    let delivered = loop {
        let page = audit(&t, "?action=notify").await;
        let entries = page["entries"].as_array().unwrap().clone();
        if entries
            .iter()
            .filter(|e| e["outcome"] == "delivered")
            .count()
            == 3
        {
            break entries;
        }
        assert!(Instant::now() < deadline, "not delivered: {page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(delivered.len(), 3, "{delivered:?}");
    let ops = delivered
        .iter()
        .find(|e| e["detail"]["channel"] == "ops")
        .unwrap();
    assert_eq!(ops["detail"]["attempts"], 2);
    assert!(
        !serde_json::to_string(&delivered)
            .unwrap()
            .contains("SECRET")
    );

    let requests = http.requests();
    let hooks: Vec<&(String, Value)> = requests
        .iter()
        .filter(|r| r.0.starts_with("/hook"))
        .collect();
    assert_eq!(hooks.len(), 2, "{requests:?}");
    let hook = &hooks[1].1;
    assert_eq!(hook["type"], "alert");
    assert_eq!(hook["channel"], "ops");
    assert_eq!(hook["agentId"], a.as_str());
    assert_eq!(hook["hostname"], "host-a");
    assert_eq!(hook["alert"]["severity"], "critical");
    assert_eq!(hook["alert"]["count"], 6);
    let telegram = requests
        .iter()
        .find(|r| r.0 == "/bot123:BOT-SECRET/sendMessage")
        .unwrap();
    assert_eq!(telegram.1["chat_id"], "-100");
    assert!(
        telegram.1["text"]
            .as_str()
            .unwrap()
            .starts_with("policy alert: severity critical"),
        "{}",
        telegram.1
    );

    let mails = smtp.messages();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.from, "<policy@example.test>");
    assert_eq!(mail.to, vec!["<soc@example.test>".to_owned()]);
    assert!(
        mail.data
            .contains("Subject: policy alert: severity critical"),
        "{}",
        mail.data
    );
    assert!(mail.data.contains("host-a"), "{}", mail.data);
}

#[tokio::test]
async fn bad_reports_and_queries_get_exact_statuses_and_change_nothing() {
    let t = TestServer::start(true).await;
    t.post_policy(ADMIN, fleet_policy()).await;
    let (a, a_token) = t.enroll(ADMIN, "host-a").await;
    let (b, _b_token) = t.enroll(ADMIN, "host-b").await;
    let _stream = t.stream(&a_token, "default").await;
    let path = format!("/api/agents/{a}/reports");

    let (status, _) = t
        .call(
            Method::POST,
            &path,
            None,
            Some(fleet_block("203.0.113.7", "1h")),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = t
        .post(
            &format!("/api/agents/{b}/reports"),
            &a_token,
            fleet_block("203.0.113.7", "1h"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        body["error"]["message"],
        format!("only the token of agent `{b}` may send its reports")
    );
    let (status, body) = t.post(&path, ADMIN, fleet_block("203.0.113.7", "1h")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let mut typo = fleet_block("203.0.113.7", "1h");
    typo["scpoe"] = json!("fleet");
    let (status, body) = t.post(&path, &a_token, typo).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["path"], "scpoe");
    assert_eq!(body["error"]["message"], "unknown field `scpoe`");

    let mut bad = fleet_block("203.0.113.7", "1h");
    bad["outcome"] = json!("done");
    let (status, body) = t.post(&path, &a_token, bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["path"], "outcome");
    assert_eq!(
        body["error"]["message"],
        "unknown outcome `done`, expected one of `executed`, `failed`, `refused`, `skipped`, `requested`"
    );
    let (status, body) = t
        .post(
            &path,
            &a_token,
            json!({"action": "block_ip", "ip": "203.0.113.7", "duration": "1h", "scope": "fleet"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["path"], "rule");
    assert_eq!(
        body["error"]["message"],
        "invalid action record: missing field `rule`"
    );

    let response = t
        .client
        .post(format!("{}{path}", t.base))
        .bearer_auth(&a_token)
        .header("content-type", "application/json")
        .body("{\"action\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let big = "x".repeat(reference_server::MAX_BODY_BYTES + 1);
    let response = t
        .client
        .post(format!("{}{path}", t.base))
        .bearer_auth(&a_token)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // None of that stored anything.
    let (_, blocks) = t.get("/api/blocks", ADMIN).await;
    assert_eq!(blocks["data"], json!([]));
    assert_eq!(
        audit(&t, &format!("?agent={a}")).await["entries"],
        json!([])
    );

    // A host-scope block and a failed kill are only audited.
    let mut host = fleet_block("203.0.113.8", "1h");
    host["scope"] = json!("host");
    assert_eq!(report(&t, &a, &a_token, host).await["kind"], "recorded");
    let failed = json!({"action": "kill_process", "pid": 1, "rule": 6, "policyVersion": "v1",
                        "outcome": "refused", "detail": "pid 1 is protected"});
    assert_eq!(report(&t, &a, &a_token, failed).await["kind"], "recorded");
    let (_, blocks) = t.get("/api/blocks", ADMIN).await;
    assert_eq!(blocks["data"], json!([]));
    for i in 0..3 {
        report(
            &t,
            &a,
            &a_token,
            fleet_block(&format!("198.51.100.{}", 10 + i), "1h"),
        )
        .await;
    }

    // Paging: newest first, a cursor to the next page.
    let first = audit(&t, &format!("?agent={a}&limit=2")).await;
    assert_eq!(first["entries"].as_array().unwrap().len(), 2);
    assert_eq!(first["entries"][0]["ip"], "198.51.100.12");
    let cursor = first["nextCursor"].as_i64().unwrap();
    let second = audit(&t, &format!("?agent={a}&limit=2&cursor={cursor}")).await;
    assert_eq!(second["entries"][0]["ip"], "198.51.100.10");
    assert_eq!(second["entries"][1]["outcome"], "refused");
    assert_eq!(
        second["entries"][1]["detail"]["detail"],
        "pid 1 is protected"
    );
    let third = audit(
        &t,
        &format!("?agent={a}&limit=2&cursor={}", second["nextCursor"]),
    )
    .await;
    assert_eq!(third["entries"].as_array().unwrap().len(), 1);
    assert_eq!(third["nextCursor"], Value::Null);
    // Time range.
    let now = chrono::Utc::now();
    let later = (now + chrono::Duration::hours(1)).to_rfc3339();
    let earlier = (now - chrono::Duration::hours(1)).to_rfc3339();
    let all = audit(&t, &format!("?agent={a}&from={}", urlencode(&earlier))).await;
    assert_eq!(all["entries"].as_array().unwrap().len(), 5);
    let none = audit(&t, &format!("?from={}", urlencode(&later))).await;
    assert_eq!(none["entries"], json!([]));
    let none = audit(&t, &format!("?to={}", urlencode(&earlier))).await;
    assert_eq!(none["entries"], json!([]));

    for (query, message) in [
        (
            "?from=yesterday",
            "invalid query parameter `from`: `yesterday` is not an RFC 3339 time (premature end of input)",
        ),
        (
            "?limit=0",
            "invalid query parameter `limit`: expected 1 to 1000, found `0`",
        ),
        (
            "?ip=999.1.1.1",
            "invalid query parameter `ip`: `999.1.1.1` is not an IP address",
        ),
        (
            "?agnet=x",
            "unknown query parameter `agnet`, expected one of `agent`, `ip`, `action`, `from`, `to`, `limit`, `cursor`, `org_id`",
        ),
    ] {
        let (status, body) = t.get(&format!("/api/audit{query}"), ADMIN).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["message"], message, "{query}");
    }
    let (status, _) = t.get("/api/audit", &a_token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = t.get("/api/approvals?status=maybe", ADMIN).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Another org's admin sees none of it.
    let (_, token) = t
        .post(
            "/api/tokens",
            ADMIN,
            json!({"role": "admin", "org_id": "acme"}),
        )
        .await;
    let acme = token["data"]["token"].as_str().unwrap();
    let (status, body) = t.get("/api/audit", acme).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["entries"], json!([]));
    let (status, _) = t.get("/api/blocks?org_id=default", acme).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

#[derive(Debug, Clone, Default)]
struct Mail {
    from: String,
    to: Vec<String>,
    data: String,
}

/// A loopback SMTP sink speaking just enough of RFC 5321 for lettre (EHLO, AUTH PLAIN, MAIL,
/// RCPT, DATA, QUIT).
struct SmtpSink {
    port: u16,
    mails: Arc<Mutex<Vec<Mail>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SmtpSink {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
        let store = mails.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let mut reader = BufReader::new(socket);
                    let mut mail = Mail::default();
                    if reply(&mut reader, "220 sink ESMTP\r\n").await.is_err() {
                        return;
                    }
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let upper = line.to_ascii_uppercase();
                        let answer = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                            "250-sink\r\n250 AUTH PLAIN LOGIN\r\n"
                        } else if upper.starts_with("AUTH") {
                            "235 ok\r\n"
                        } else if upper.starts_with("MAIL FROM:") {
                            mail.from = line[10..].trim().split(' ').next().unwrap().to_owned();
                            "250 ok\r\n"
                        } else if upper.starts_with("RCPT TO:") {
                            mail.to.push(line[8..].trim().to_owned());
                            "250 ok\r\n"
                        } else if upper.starts_with("DATA") {
                            reply(&mut reader, "354 go on\r\n").await.unwrap();
                            loop {
                                let mut data = String::new();
                                reader.read_line(&mut data).await.unwrap();
                                if data == ".\r\n" || data.is_empty() {
                                    break;
                                }
                                mail.data.push_str(&data);
                            }
                            store.lock().unwrap().push(std::mem::take(&mut mail));
                            "250 queued\r\n"
                        } else if upper.starts_with("QUIT") {
                            let _ = reply(&mut reader, "221 bye\r\n").await;
                            return;
                        } else {
                            "250 ok\r\n"
                        };
                        if reply(&mut reader, answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { port, mails, task }
    }

    fn messages(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }
}

async fn reply(reader: &mut BufReader<tokio::net::TcpStream>, text: &str) -> std::io::Result<()> {
    reader.get_mut().write_all(text.as_bytes()).await
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
