//! sshd's messages, classified: which ones are authentication failures, which ones open or end
//! a connection, and which address sshd itself wrote in them.
//!
//! Addresses are always taken from the position where sshd writes them, counted from the end
//! of the message where the text before it (a user name) is chosen by the client: a user named
//! `x from 1.2.3.4 port 22 ssh2` cannot make 1.2.3.4 the source.

use std::net::IpAddr;

use crate::event::canonical_ip;

/// The client address of a connection, as sshd logged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

/// What one sshd message means for the attempt tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    /// `Failed <method> for [invalid user ]<user> from <ip> port <n> ssh2[: ...]`
    Failed {
        method: &'a str,
        invalid_user: bool,
        user: &'a str,
        peer: Peer,
    },
    /// The user was refused before any password was checked: `Invalid user <user> from ...`,
    /// `User <user> from <ip> not allowed because ...`, `ROOT LOGIN REFUSED FROM <ip>`.
    Refused { user: Option<&'a str>, peer: Peer },
    /// `Accepted <method> for <user> from <ip> port <n> ssh2`
    Accepted { peer: Peer },
    /// The connection ended. `probe` is true when the client got past the TCP handshake and
    /// spoke SSH (a `[preauth]` close, an authenticating or invalid user, a failed key or
    /// version negotiation); false for a bare TCP open and close.
    Closed {
        user: Option<&'a str>,
        peer: Peer,
        probe: bool,
    },
    /// Anything else: PAM chatter, `Disconnecting ...`, session lines, unknown text.
    Other,
}

/// Classifies one sshd message (without the syslog envelope).
pub(crate) fn classify(message: &str) -> Message<'_> {
    let message = message.trim_end_matches(['\r', ' ']);
    let (message, preauth) = match message.strip_suffix(" [preauth]") {
        Some(m) => (m, true),
        None => (message, false),
    };
    let message = message
        .strip_prefix("error: ")
        .or_else(|| message.strip_prefix("fatal: "))
        .unwrap_or(message);
    let Some(&first) = message.as_bytes().first() else {
        return Message::Other;
    };
    let parsed = match first {
        b'F' => message.strip_prefix("Failed ").and_then(failed),
        b'A' => message.strip_prefix("Accepted ").and_then(accepted),
        b'I' => message.strip_prefix("Invalid user ").and_then(invalid_user),
        b'U' => match message.strip_prefix("User ") {
            Some(rest) => not_allowed(rest),
            None => message
                .strip_prefix("Unable to negotiate with ")
                .and_then(negotiate),
        },
        b'C' => match message.strip_prefix("Connection closed by ") {
            Some(rest) => closed(rest, preauth),
            None => message
                .strip_prefix("Connection reset by ")
                .and_then(|r| closed(r, preauth)),
        },
        b'D' => message
            .strip_prefix("Disconnected from ")
            .and_then(|r| closed(r, preauth)),
        b'R' => match message.strip_prefix("Received disconnect from ") {
            Some(rest) => received_disconnect(rest, preauth),
            None => message
                .strip_prefix("ROOT LOGIN REFUSED FROM ")
                .and_then(root_refused),
        },
        b'b' => message
            .strip_prefix("banner exchange: Connection from ")
            .and_then(banner),
        b'B' => message
            .strip_prefix("Bad protocol version identification ")
            .and_then(bad_version),
        b'm' => message
            .strip_prefix("maximum authentication attempts exceeded for ")
            .and_then(max_auth),
        _ => None,
    };
    parsed.unwrap_or(Message::Other)
}

/// `<method> for [invalid user ]<user> from <ip> port <n> ssh2[: <info>]`
fn failed(rest: &str) -> Option<Message<'_>> {
    let (method, rest) = rest.split_once(" for ")?;
    // Hostbased failures carry a client-chosen user and host name after the address, so the
    // address cannot be told from the end; hostbased is machine-to-machine and not counted.
    if method.contains(' ') || method == "hostbased" {
        return None;
    }
    let (user, peer) = user_from_peer(rest)?;
    let (invalid_user, user) = match user.strip_prefix("invalid user ") {
        Some(u) => (true, u),
        None => (false, user),
    };
    Some(Message::Failed {
        method,
        invalid_user,
        user,
        peer,
    })
}

fn accepted(rest: &str) -> Option<Message<'_>> {
    let (_, rest) = rest.split_once(" for ")?;
    let (_, peer) = user_from_peer(rest)?;
    Some(Message::Accepted { peer })
}

fn max_auth(rest: &str) -> Option<Message<'_>> {
    let (user, peer) = user_from_peer(rest)?;
    let user = user.strip_prefix("invalid user ").unwrap_or(user);
    Some(Message::Closed {
        user: Some(user),
        peer,
        probe: true,
    })
}

/// `<user> from <ip>[ port <n>]`
fn invalid_user(rest: &str) -> Option<Message<'_>> {
    let (user, peer) = tail_from_peer(rest)?;
    Some(Message::Refused {
        user: Some(user),
        peer,
    })
}

/// `<user> from <ip> not allowed because <reason>` (the user is a real account name here)
fn not_allowed(rest: &str) -> Option<Message<'_>> {
    let (head, _) = rest.split_once(" not allowed because ")?;
    let (user, host) = head.rsplit_once(" from ")?;
    Some(Message::Refused {
        user: Some(user),
        peer: Peer {
            ip: ip(host)?,
            port: None,
        },
    })
}

fn root_refused(rest: &str) -> Option<Message<'_>> {
    let host = rest.split(' ').next()?;
    Some(Message::Refused {
        user: Some("root"),
        peer: Peer {
            ip: ip(host)?,
            port: None,
        },
    })
}

/// `[authenticating user <u> |invalid user <u> |user <u> ]<ip>[ port <n>]`
fn closed(rest: &str, preauth: bool) -> Option<Message<'_>> {
    let (kind, rest) = if let Some(r) = rest.strip_prefix("authenticating user ") {
        (UserKind::Authenticating, r)
    } else if let Some(r) = rest.strip_prefix("invalid user ") {
        (UserKind::Invalid, r)
    } else if let Some(r) = rest.strip_prefix("user ") {
        (UserKind::LoggedIn, r)
    } else {
        (UserKind::None, rest)
    };
    let (user, peer) = match kind {
        UserKind::None => (None, peer_at_end(rest)?),
        _ => {
            let (user, peer) = tail_peer(rest)?;
            (Some(user), peer)
        }
    };
    match kind {
        // A session that logged in and ended: nothing to count.
        UserKind::LoggedIn => Some(Message::Other),
        UserKind::Authenticating | UserKind::Invalid => Some(Message::Closed {
            user,
            peer,
            probe: true,
        }),
        UserKind::None => Some(Message::Closed {
            user,
            peer,
            probe: preauth,
        }),
    }
}

enum UserKind {
    None,
    Authenticating,
    Invalid,
    LoggedIn,
}

/// `<ip> port <n>:<code>: <text>` or the old `<ip>: <code>: <text>`; the text is the client's.
fn received_disconnect(rest: &str, preauth: bool) -> Option<Message<'_>> {
    let (token, after) = rest.split_once(' ').unwrap_or((rest, ""));
    let peer = if let Some(port) = after.strip_prefix("port ") {
        let port = port.split(':').next()?;
        Peer {
            ip: ip(token)?,
            port: Some(port.parse().ok()?),
        }
    } else {
        Peer {
            ip: ip(token.strip_suffix(':')?)?,
            port: None,
        }
    };
    Some(Message::Closed {
        user: None,
        peer,
        probe: preauth,
    })
}

/// `<ip> port <n>: no matching ... found. Their offer: ...`
fn negotiate(rest: &str) -> Option<Message<'_>> {
    let (head, _) = rest.split_once(": ")?;
    Some(Message::Closed {
        user: None,
        peer: peer_at_end(head)?,
        probe: true,
    })
}

/// `<ip> port <n>: invalid format`
fn banner(rest: &str) -> Option<Message<'_>> {
    let (head, _) = rest.split_once(": ")?;
    Some(Message::Closed {
        user: None,
        peer: peer_at_end(head)?,
        probe: true,
    })
}

/// `'<client text>' from <ip> port <n>`
fn bad_version(rest: &str) -> Option<Message<'_>> {
    let (_, peer) = tail_from_peer(rest)?;
    Some(Message::Closed {
        user: None,
        peer,
        probe: true,
    })
}

/// `<user> from <ip> port <n> ssh2[: <info>]` (or the old `ssh1`, or no port at all): the
/// address is the last ` from <ip> port <n> ssh2` that ends the message or is followed by
/// `: `; anything a client put in the user name sits before it.
fn user_from_peer(rest: &str) -> Option<(&str, Peer)> {
    let mut end = rest.len();
    while let Some(at) = rest.get(..end)?.rfind(" from ") {
        let user = rest.get(..at)?;
        let tail = rest.get(at + 6..)?;
        if let Some(peer) = ssh_peer(tail) {
            return Some((user, peer));
        }
        end = at;
    }
    // Older formats: `... from <ip>[ port <n>]` and nothing after it.
    tail_from_peer(rest)
}

/// `<ip> port <n> ssh2` followed by the end of the message or `: <info>`.
fn ssh_peer(tail: &str) -> Option<Peer> {
    let (host, rest) = tail.split_once(" port ")?;
    let (port, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let rest = rest
        .strip_prefix("ssh2")
        .or_else(|| rest.strip_prefix("ssh1"))?;
    if !(rest.is_empty() || rest.starts_with(": ")) {
        return None;
    }
    Some(Peer {
        ip: ip(host)?,
        port: Some(port.parse().ok()?),
    })
}

/// `<text> from <ip>[ port <n>]` at the very end.
fn tail_from_peer(rest: &str) -> Option<(&str, Peer)> {
    let (head, port) = split_port(rest);
    let (user, host) = head.rsplit_once(" from ")?;
    Some((
        user,
        Peer {
            ip: ip(host)?,
            port,
        },
    ))
}

/// `<text> <ip>[ port <n>]` at the very end.
fn tail_peer(rest: &str) -> Option<(&str, Peer)> {
    let (head, port) = split_port(rest);
    let (user, host) = head.rsplit_once(' ')?;
    Some((
        user,
        Peer {
            ip: ip(host)?,
            port,
        },
    ))
}

/// `<ip>[ port <n>]` and nothing else.
fn peer_at_end(rest: &str) -> Option<Peer> {
    let (host, port) = split_port(rest);
    Some(Peer {
        ip: ip(host)?,
        port,
    })
}

/// Splits a trailing ` port <n>` off.
fn split_port(s: &str) -> (&str, Option<u16>) {
    if let Some((head, port)) = s.rsplit_once(" port ") {
        if let Ok(port) = port.parse::<u16>() {
            return (head, Some(port));
        }
    }
    (s, None)
}

fn ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok().map(canonical_ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str, port: Option<u16>) -> Peer {
        Peer {
            ip: ip.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn failed_lines_take_the_address_sshd_wrote() {
        assert_eq!(
            classify(
                "Failed password for invalid user from 10.10.1.1 from 127.0.0.1 port 58946 ssh2"
            ),
            Message::Failed {
                method: "password",
                invalid_user: true,
                user: "from 10.10.1.1",
                peer: peer("127.0.0.1", Some(58946))
            }
        );
        assert_eq!(
            classify(
                "Failed password for invalid user test from 10.10.1.2 port 55555 ssh2 from 127.0.0.1 port 58946 ssh2"
            ),
            Message::Failed {
                method: "password",
                invalid_user: true,
                user: "test from 10.10.1.2 port 55555 ssh2",
                peer: peer("127.0.0.1", Some(58946))
            }
        );
        assert_eq!(
            classify("Failed publickey for git from 2001:db8::7 port 57904 ssh2: ECDSA SHA256:abc"),
            Message::Failed {
                method: "publickey",
                invalid_user: false,
                user: "git",
                peer: peer("2001:db8::7", Some(57904))
            }
        );
        assert_eq!(
            classify(
                "Failed keyboard-interactive/pam for invalid user x from ::ffff:192.0.2.9 port 1 ssh2"
            ),
            Message::Failed {
                method: "keyboard-interactive/pam",
                invalid_user: true,
                user: "x",
                peer: peer("192.0.2.9", Some(1))
            }
        );
    }

    #[test]
    fn closes_tell_probes_from_tcp_checks() {
        assert_eq!(
            classify("Connection closed by 192.0.2.1 port 39078"),
            Message::Closed {
                user: None,
                peer: peer("192.0.2.1", Some(39078)),
                probe: false
            }
        );
        assert_eq!(
            classify("Connection closed by 192.0.2.1 port 39078 [preauth]"),
            Message::Closed {
                user: None,
                peer: peer("192.0.2.1", Some(39078)),
                probe: true
            }
        );
        assert_eq!(
            classify(
                "Connection closed by authenticating user test 127.0.0.1 port 12345 192.0.2.11 port 46039 [preauth]"
            ),
            Message::Closed {
                user: Some("test 127.0.0.1 port 12345"),
                peer: peer("192.0.2.11", Some(46039)),
                probe: true
            }
        );
        assert_eq!(
            classify(
                "Received disconnect from 198.51.100.76 port 58846:11: Bye from 1.2.3.4 port 5 [preauth]"
            ),
            Message::Closed {
                user: None,
                peer: peer("198.51.100.76", Some(58846)),
                probe: true
            }
        );
        assert_eq!(
            classify("Disconnected from user pe 192.0.2.3 port 39074"),
            Message::Other
        );
        assert_eq!(
            classify("Did not receive identification string from 192.0.2.5 port 35836"),
            Message::Other
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            classify("Invalid user  from 192.0.2.68 port 34916"),
            Message::Refused {
                user: Some(""),
                peer: peer("192.0.2.68", Some(34916))
            }
        );
        assert_eq!(
            classify("User root from 192.0.2.4 not allowed because not listed in AllowUsers"),
            Message::Refused {
                user: Some("root"),
                peer: peer("192.0.2.4", None)
            }
        );
        assert_eq!(
            classify(
                "Bad protocol version identification 'x' from 192.0.2.1' from 69.61.56.115 port 31778"
            ),
            Message::Closed {
                user: None,
                peer: peer("69.61.56.115", Some(31778)),
                probe: true
            }
        );
    }

    #[test]
    fn context_lines_are_other() {
        for line in [
            "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=192.0.2.112  user=root",
            "error: PAM: Authentication failure for x from 192.0.2.1",
            "Disconnecting invalid user admin 192.0.2.117 port 44004: Change of username [preauth]",
            "Failed hostbased for dan from 127.0.0.1 port 45785 ssh2: RSA x, client user \"dan\"",
            "Server listening on 0.0.0.0 port 22.",
            "Failed password for root from example.com port 22 ssh2",
            "",
        ] {
            assert_eq!(classify(line), Message::Other, "{line}");
        }
    }
}
