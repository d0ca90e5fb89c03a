//! Fast path for the common event shape: a flat object whose strings have no escapes. Anything
//! else (escapes, nested values, errors of any kind) returns `None` and goes through the serde
//! visitor, which alone produces error messages; on the inputs it accepts, this path yields the
//! same event as the visitor (checked by a test).

use std::net::IpAddr;

use serde_json::Value;

use super::json::{Known, parse_rfc3339};
use super::{ThreatEvent, canonical_ip};

enum Token<'a> {
    Str(&'a str),
    Num(&'a str),
    Bool(bool),
    Null,
}

/// Parses `line` if it has the common shape and is a valid event.
pub(super) fn parse(line: &[u8]) -> Option<ThreatEvent> {
    let text = std::str::from_utf8(line).ok()?;
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if *b.get(i)? != b'{' {
        return None;
    }
    i = skip_ws(b, i + 1);
    let mut event = ThreatEvent::default();
    if b.get(i) == Some(&b'}') {
        return (skip_ws(b, i + 1) == b.len()).then_some(event);
    }
    let mut seen = 0u16;
    loop {
        if *b.get(i)? != b'"' {
            return None;
        }
        let (key, next) = string(text, i)?;
        i = skip_ws(b, next);
        if *b.get(i)? != b':' {
            return None;
        }
        i = skip_ws(b, i + 1);
        let (token, next) = value(text, i)?;
        i = skip_ws(b, next);
        match Known::from_name(key) {
            Some(known) => {
                let bit = 1u16 << known as u16;
                if seen & bit != 0 {
                    return None;
                }
                seen |= bit;
                assign(&mut event, known, token)?;
            }
            None => {
                let value = match token {
                    Token::Str(s) => Value::String(s.to_owned()),
                    Token::Num(n) => serde_json::from_str(n).ok()?,
                    Token::Bool(v) => Value::Bool(v),
                    Token::Null => Value::Null,
                };
                if event.extra.insert(key.to_owned(), value).is_some() {
                    return None;
                }
            }
        }
        match *b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => break,
            _ => return None,
        }
    }
    (skip_ws(b, i + 1) == b.len()).then_some(event)
}

fn assign(event: &mut ThreatEvent, known: Known, token: Token<'_>) -> Option<()> {
    fn text(token: Token<'_>) -> Option<Option<String>> {
        match token {
            Token::Str(s) => Some(Some(s.to_owned())),
            Token::Null => Some(None),
            _ => None,
        }
    }
    fn unsigned(token: Token<'_>, max: u64) -> Option<Option<u64>> {
        match token {
            Token::Num(n) if n.bytes().all(|c| c.is_ascii_digit()) => {
                n.parse::<u64>().ok().filter(|v| *v <= max).map(Some)
            }
            Token::Null => Some(None),
            _ => None,
        }
    }
    match known {
        Known::Id => event.id = text(token)?,
        Known::Type => event.threat_type = text(token)?,
        Known::Process => event.process = text(token)?,
        Known::FilePath => event.file_path = text(token)?,
        Known::User => event.user = text(token)?,
        Known::Host => event.host = text(token)?,
        Known::Timestamp => {
            event.timestamp = match token {
                Token::Str(s) => Some(parse_rfc3339(s)?),
                Token::Null => None,
                _ => return None,
            }
        }
        Known::Severity => {
            event.severity = match token {
                Token::Str(s) => Some(s.parse().ok()?),
                Token::Null => None,
                _ => return None,
            }
        }
        Known::SrcIp => {
            event.src_ip = match token {
                Token::Str(s) => Some(canonical_ip(s.parse::<IpAddr>().ok()?)),
                Token::Null => None,
                _ => return None,
            }
        }
        Known::Confidence => {
            event.confidence = match token {
                Token::Num(n) => n.parse::<f64>().ok().filter(|v| (0.0..=1.0).contains(v))?,
                Token::Null => 0.0,
                _ => return None,
            }
        }
        Known::DstPort => {
            event.dst_port = unsigned(token, u64::from(u16::MAX))?.map(|v| v as u16);
        }
        Known::Pid => event.pid = unsigned(token, u64::from(u32::MAX))?.map(|v| v as u32),
    }
    Some(())
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The string starting at the quote `start`, if it has no escapes or control characters, and
/// the position after its closing quote.
fn string(text: &str, start: usize) -> Option<(&str, usize)> {
    let b = text.as_bytes();
    // Event strings are short: one plain pass beats a vectorized search here.
    let mut end = start + 1;
    loop {
        match *b.get(end)? {
            b'"' => break,
            b'\\' | 0..=0x1f => return None,
            _ => end += 1,
        }
    }
    Some((text.get(start + 1..end)?, end + 1))
}

fn value(text: &str, i: usize) -> Option<(Token<'_>, usize)> {
    let b = text.as_bytes();
    match *b.get(i)? {
        b'"' => string(text, i).map(|(s, next)| (Token::Str(s), next)),
        b'n' => literal(b, i, b"null").map(|next| (Token::Null, next)),
        b't' => literal(b, i, b"true").map(|next| (Token::Bool(true), next)),
        b'f' => literal(b, i, b"false").map(|next| (Token::Bool(false), next)),
        b'-' | b'0'..=b'9' => {
            let len = b
                .get(i..)?
                .iter()
                .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                .unwrap_or(b.len() - i);
            let number = text.get(i..i + len)?;
            valid_number(number.as_bytes()).then_some((Token::Num(number), i + len))
        }
        _ => None,
    }
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
}

/// JSON number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn valid_number(n: &[u8]) -> bool {
    let mut i = usize::from(n.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while n.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    match n.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if n.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(n.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(n.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == n.len()
}
