//! Data-driven tests of the sshd log source: every `tests/data/sshd/*.log` case, annotated with
//! the attempts each line completes (format in `tests/data/sshd/README.md`).
#![cfg(feature = "sshd")]
// Test helpers outside `#[test]` functions may unwrap and index too.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::fmt::Write as _;
use std::path::Path;

use policy_engine::sshd::{SshdConfig, SshdTracker};
use policy_engine::{Severity, ThreatEvent};

/// Runs one case file and returns a description of every mismatch.
fn check(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut tracker = SshdTracker::new(SshdConfig::for_year(2026));
    let mut problems = String::new();
    // (line number of the fed line, the attempt it completed)
    let mut pending: Option<(usize, Option<ThreatEvent>)> = None;
    let flush = |pending: &mut Option<(usize, Option<ThreatEvent>)>, problems: &mut String| {
        if let Some((no, Some(event))) = pending.take() {
            let _ = writeln!(
                problems,
                "{}:{no}: unexpected attempt from {:?} user {:?}",
                path.display(),
                event.src_ip,
                event.user
            );
        }
    };
    for (index, line) in text.lines().enumerate() {
        let no = index + 1;
        if let Some(expect) = line.strip_prefix("#> ") {
            let Some((fed, got)) = pending.take() else {
                let _ = writeln!(
                    problems,
                    "{}:{no}: expectation after no fed line",
                    path.display()
                );
                continue;
            };
            let fields: Vec<&str> = expect.splitn(3, ' ').collect();
            let (ip, rest) = (fields[0], expect[fields[0].len()..].trim_start());
            // The user may contain spaces; a trailing RFC 3339 time is split off.
            let (user, time) = match rest.rsplit_once(' ') {
                Some((user, time))
                    if time.len() > 19 && time.as_bytes()[4] == b'-' && time.contains('T') =>
                {
                    (user, Some(time))
                }
                _ => (rest, None),
            };
            match got {
                None => {
                    let _ = writeln!(
                        problems,
                        "{}:{fed}: expected an attempt from {ip}, got none",
                        path.display()
                    );
                }
                Some(event) => {
                    let want_user = (user != "-").then(|| user.to_owned());
                    let mismatch = event.src_ip != Some(ip.parse().unwrap())
                        || event.user != want_user
                        || time.is_some_and(|t| event.timestamp != Some(t.parse().unwrap()));
                    if mismatch {
                        let _ = writeln!(
                            problems,
                            "{}:{fed}: expected {ip} {user:?} {time:?}, got {:?} {:?} {:?}",
                            path.display(),
                            event.src_ip,
                            event.user,
                            event.timestamp.map(|t| t.to_rfc3339())
                        );
                    }
                    assert_eq!(event.threat_type.as_deref(), Some("brute_force"));
                    assert_eq!(event.process.as_deref(), Some("sshd"));
                    assert_eq!(event.severity, Some(Severity::Medium));
                }
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        flush(&mut pending, &mut problems);
        pending = Some((no, tracker.feed(line).map(|a| a.into_event())));
    }
    flush(&mut pending, &mut problems);
    problems
}

#[test]
fn every_case_file_completes_exactly_the_annotated_attempts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sshd");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "case files missing in {}", dir.display());
    let problems: String = files.iter().map(|f| check(f)).collect();
    assert!(problems.is_empty(), "\n{problems}");
}

#[test]
fn a_case_with_a_wrong_expectation_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrong.log");
    std::fs::write(
        &path,
        "Failed password for root from 192.0.2.1 port 1 ssh2\n#> 192.0.2.2 root\nFailed password for root from 192.0.2.1 port 2 ssh2\n",
    )
    .unwrap();
    let problems = check(&path);
    let name = path.display();
    assert_eq!(
        problems,
        format!(
            "{name}:1: expected 192.0.2.2 \"root\" None, got Some(192.0.2.1) Some(\"root\") None\n\
             {name}:3: unexpected attempt from Some(192.0.2.1) user Some(\"root\")\n"
        )
    );
}

#[test]
fn bare_lines_carry_no_time_and_syslog_lines_carry_the_host() {
    let mut tracker = SshdTracker::new(SshdConfig::for_year(2026));
    let bare = tracker
        .feed("Failed password for root from 192.0.2.1 port 1 ssh2")
        .unwrap();
    assert_eq!((bare.timestamp, bare.host, bare.pid), (None, None, None));
    let mut tracker = SshdTracker::new(SshdConfig::for_year(2026));
    let event = tracker
        .feed("Mar  7 12:00:01 web1 sshd[77]: Failed password for root from 192.0.2.1 port 1 ssh2")
        .unwrap()
        .into_event();
    assert_eq!(event.host.as_deref(), Some("web1"));
    assert_eq!(event.pid, Some(77));
    assert_eq!(event.id.as_deref(), Some("sshd:1"));
    let stats = tracker.stats();
    assert_eq!(
        (
            stats.lines,
            stats.sshd_lines,
            stats.attempts,
            stats.connections
        ),
        (1, 1, 1, 1)
    );
}

#[test]
fn connection_state_stays_under_the_cap() {
    let mut config = SshdConfig::for_year(2026);
    config.max_connections = 1000;
    let mut tracker = SshdTracker::new(config);
    for i in 0..50_000u32 {
        let line = format!(
            "Mar  7 12:00:01 web1 sshd[{i}]: Invalid user u from 10.{}.{}.{} port 22",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        );
        assert!(tracker.feed(&line).is_none());
        assert!(tracker.stats().connections <= 1000);
    }
    assert!(tracker.stats().evicted >= 49_000);
}
