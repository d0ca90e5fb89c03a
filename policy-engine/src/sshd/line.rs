//! The envelope of a log line: timestamp, host, program and PID around sshd's message.
//!
//! Four envelopes are read: classic syslog (`Mar  7 12:00:01 host sshd[123]: ...`), RFC 3339
//! (`2026-03-07T12:00:01.123+00:00 host sshd[123]: ...`, rsyslog high precision and journalctl
//! `-o short-iso`), RFC 5424 (`<38>1 2026-03-07T12:00:01Z host sshd 123 - - ...`) and bare
//! messages (what `sshd -E FILE` writes: no envelope at all).

use chrono::{DateTime, Utc};

use super::time::{self, SyslogStamp};

/// Program names whose lines are read: OpenSSH before 9.8 logs as `sshd`, 9.8 and later as
/// `sshd-session` for each connection, 10.0 adds `sshd-auth`. Anything else (`sshd2`,
/// `fake-sshd`, `cron`) is another program's line and is ignored.
pub const SSHD_PROGRAMS: [&str; 3] = ["sshd", "sshd-session", "sshd-auth"];

/// When a line was written, as far as its envelope says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stamp {
    /// Classic syslog: no year.
    Syslog(SyslogStamp),
    /// A full timestamp.
    Absolute(DateTime<Utc>),
    /// No timestamp (bare messages).
    None,
}

/// One line taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Envelope<'a> {
    pub stamp: Stamp,
    pub host: Option<&'a str>,
    pub pid: Option<u32>,
    pub message: &'a str,
}

/// Which envelope lines carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LineFormat {
    /// Syslog-style envelopes (classic, RFC 3339 or RFC 5424), recognised line by line; lines
    /// without one are ignored.
    #[default]
    Syslog,
    /// Bare sshd messages, as `sshd -E FILE` writes them: every line is sshd's own.
    Bare,
}

/// Splits `line` into its envelope and message; `None` for lines of other programs and lines
/// that are not log lines at all.
pub(crate) fn envelope(line: &str, format: LineFormat) -> Option<Envelope<'_>> {
    match format {
        LineFormat::Bare => Some(Envelope {
            stamp: Stamp::None,
            host: None,
            pid: None,
            message: line,
        }),
        LineFormat::Syslog => syslog_envelope(line),
    }
}

/// Whether `line` starts with one of the syslog envelopes (used to guess the format).
pub(crate) fn looks_like_syslog(line: &str) -> bool {
    time::syslog_prefix(line).is_some()
        || time::rfc3339_prefix(line).is_some()
        || line.starts_with('<') && line.find('>').is_some_and(|i| i < 5)
}

fn syslog_envelope(line: &str) -> Option<Envelope<'_>> {
    let first = *line.as_bytes().first()?;
    if first.is_ascii_digit() {
        let (stamp, rest) = time::rfc3339_prefix(line)?;
        tagged(Stamp::Absolute(stamp), rest)
    } else if first == b'<' {
        rfc5424(line)
    } else {
        let (stamp, rest) = time::syslog_prefix(line)?;
        tagged(Stamp::Syslog(stamp), rest)
    }
}

/// `HOST PROG[PID]: MSG`, or `PROG[PID]: MSG` when the host was left out.
fn tagged(stamp: Stamp, rest: &str) -> Option<Envelope<'_>> {
    let (first, after) = rest.split_once(' ')?;
    let (host, tag, message) = if first.ends_with(':') {
        (None, first, after)
    } else {
        let (tag, message) = after.split_once(' ')?;
        (Some(first), tag, message)
    };
    let tag = tag.strip_suffix(':')?;
    let (program, pid) = match tag.split_once('[') {
        Some((program, pid)) => (program, Some(pid.strip_suffix(']')?.parse::<u32>().ok()?)),
        None => (tag, None),
    };
    if !SSHD_PROGRAMS.contains(&program) {
        return None;
    }
    // Solaris: `sshd[20878]: [ID 800047 auth.info] Failed ...`
    let message = match message.strip_prefix("[ID ") {
        Some(tail) => tail.split_once("] ").map_or(message, |(_, m)| m),
        None => message,
    };
    Some(Envelope {
        stamp,
        host,
        pid,
        message,
    })
}

/// `<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG`
fn rfc5424(line: &str) -> Option<Envelope<'_>> {
    let (_, rest) = line.split_once('>')?;
    let rest = rest.strip_prefix("1 ")?;
    let (stamp, rest) = rest.split_once(' ')?;
    let stamp = if stamp == "-" {
        Stamp::None
    } else {
        Stamp::Absolute(time::rfc3339(stamp)?)
    };
    let (host, rest) = rest.split_once(' ')?;
    let (app, rest) = rest.split_once(' ')?;
    let (procid, rest) = rest.split_once(' ')?;
    let (_msgid, rest) = rest.split_once(' ')?;
    if !SSHD_PROGRAMS.contains(&app) {
        return None;
    }
    let message = skip_structured_data(rest)?;
    let message = message.strip_prefix('\u{feff}').unwrap_or(message);
    Some(Envelope {
        stamp,
        host: (host != "-").then_some(host),
        pid: procid.parse().ok(),
        message,
    })
}

/// Skips `-` or a run of `[id k="v" ...]` elements (with `\]` escapes) and the space after.
fn skip_structured_data(s: &str) -> Option<&str> {
    if let Some(rest) = s.strip_prefix('-') {
        return Some(rest.strip_prefix(' ').unwrap_or(rest));
    }
    let b = s.as_bytes();
    let mut i = 0;
    while b.get(i) == Some(&b'[') {
        let mut in_quotes = false;
        loop {
            i += 1;
            match b.get(i)? {
                b'\\' => i += 1,
                b'"' => in_quotes = !in_quotes,
                b']' if !in_quotes => break,
                _ => {}
            }
        }
        i += 1;
    }
    let rest = s.get(i..)?;
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(line: &str) -> Option<Envelope<'_>> {
        envelope(line, LineFormat::Syslog)
    }

    #[test]
    fn classic_with_and_without_host() {
        let e = env("Mar  7 12:00:01 web1 sshd[123]: Failed password").unwrap();
        assert_eq!(
            (e.host, e.pid, e.message),
            (Some("web1"), Some(123), "Failed password")
        );
        let e = env("Nov 23 21:50:19 sshd[8148]: Disconnecting").unwrap();
        assert_eq!(
            (e.host, e.pid, e.message),
            (None, Some(8148), "Disconnecting")
        );
        let e = env("Mar  7 12:00:01 web1 sshd: x y").unwrap();
        assert_eq!((e.host, e.pid, e.message), (Some("web1"), None, "x y"));
    }

    #[test]
    fn rfc3339_and_session_process() {
        let e = env("2026-03-07T12:00:01.5+01:00 web1 sshd-session[9]: Invalid user a").unwrap();
        assert_eq!(
            e.stamp,
            Stamp::Absolute(time::rfc3339("2026-03-07T11:00:01.5Z").unwrap())
        );
        assert_eq!(
            (e.host, e.pid, e.message),
            (Some("web1"), Some(9), "Invalid user a")
        );
    }

    #[test]
    fn other_programs_are_ignored() {
        for line in [
            "Mar  7 12:00:01 web1 cron[12]: sshd[5]: Failed password for root from 1.2.3.4 port 1 ssh2",
            "Mar  7 12:00:01 web1 fake-sshd[5]: Failed password for root from 1.2.3.4 port 1 ssh2",
            "Mar  7 12:00:01 web1 sshd2[5]: Failed password for root from 1.2.3.4 port 1 ssh2",
            "Mar  7 12:00:01 web1 sshd[x]: Failed password for root from 1.2.3.4 port 1 ssh2",
            "Failed password for root from 1.2.3.4 port 1 ssh2",
        ] {
            assert_eq!(env(line), None, "{line}");
        }
    }

    #[test]
    fn solaris_id_is_skipped() {
        let e = env("Mar 29 05:59:23 dusky sshd[20878]: [ID 800047 auth.info] Failed x").unwrap();
        assert_eq!(e.message, "Failed x");
    }

    #[test]
    fn rfc5424_with_structured_data() {
        let e = env(r#"<38>1 2019-07-08T17:40:17.9-04:00 h.example sshd 55555 - [t a="1"][x@1 v="[b\]"] Failed x"#)
            .unwrap();
        assert_eq!(
            (e.host, e.pid, e.message),
            (Some("h.example"), Some(55555), "Failed x")
        );
        let e = env("<38>1 - h sshd 7 - - Failed y").unwrap();
        assert_eq!((e.stamp, e.message), (Stamp::None, "Failed y"));
        assert_eq!(env("<38>1 - h cron 7 - - Failed y"), None);
    }
}
