//! Hand-written serde visitor for [`ThreatEvent`]: keys are matched without allocating, known
//! values are parsed straight from the borrowed text, and only unknown fields build a
//! `serde_json::Value`.

use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::{ThreatEvent, canonical_ip};
use crate::severity::Severity;

impl<'de> serde::Deserialize<'de> for ThreatEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EventVisitor)
    }
}

/// The known fields, in the order of the contract.
#[derive(Clone, Copy)]
pub(super) enum Known {
    Id,
    Timestamp,
    Type,
    Severity,
    Confidence,
    SrcIp,
    DstPort,
    Pid,
    Process,
    FilePath,
    User,
    Host,
}

impl Known {
    pub(super) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "id" => Self::Id,
            "timestamp" => Self::Timestamp,
            "type" => Self::Type,
            "severity" => Self::Severity,
            "confidence" => Self::Confidence,
            "srcIp" => Self::SrcIp,
            "dstPort" => Self::DstPort,
            "pid" => Self::Pid,
            "process" => Self::Process,
            "filePath" => Self::FilePath,
            "user" => Self::User,
            "host" => Self::Host,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::Timestamp => "timestamp",
            Self::Type => "type",
            Self::Severity => "severity",
            Self::Confidence => "confidence",
            Self::SrcIp => "srcIp",
            Self::DstPort => "dstPort",
            Self::Pid => "pid",
            Self::Process => "process",
            Self::FilePath => "filePath",
            Self::User => "user",
            Self::Host => "host",
        }
    }
}

enum Key {
    Known(Known),
    Other(String),
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
        Ok(match Known::from_name(name) {
            Some(known) => Key::Known(known),
            None => Key::Other(name.to_owned()),
        })
    }
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = ThreatEvent;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a threat event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ThreatEvent, A::Error> {
        let mut event = ThreatEvent::default();
        let mut seen = 0u16;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let known = match key {
                Key::Known(known) => known,
                Key::Other(name) => {
                    let value: Value = map.next_value()?;
                    if event.extra.contains_key(&name) {
                        return Err(de::Error::custom(format_args!("duplicate field `{name}`")));
                    }
                    insert(&mut event.extra, name, value);
                    continue;
                }
            };
            let bit = 1u16 << known as u16;
            if seen & bit != 0 {
                return Err(de::Error::custom(format_args!(
                    "duplicate field `{}`",
                    known.name()
                )));
            }
            seen |= bit;
            let field = known.name();
            match known {
                Known::Id => event.id = map.next_value_seed(Opt(Text(field)))?,
                Known::Timestamp => event.timestamp = map.next_value_seed(Opt(Stamp))?,
                Known::Type => event.threat_type = map.next_value_seed(Opt(Text(field)))?,
                Known::Severity => event.severity = map.next_value_seed(Opt(Sev))?,
                Known::Confidence => {
                    event.confidence = map.next_value_seed(Opt(Confidence))?.unwrap_or(0.0);
                }
                Known::SrcIp => event.src_ip = map.next_value_seed(Opt(Ip))?,
                Known::DstPort => {
                    event.dst_port = map
                        .next_value_seed(Opt(Int::<u16>(field, PhantomData)))?
                        .and_then(|v| u16::try_from(v).ok());
                }
                Known::Pid => {
                    event.pid = map
                        .next_value_seed(Opt(Int::<u32>(field, PhantomData)))?
                        .and_then(|v| u32::try_from(v).ok());
                }
                Known::Process => event.process = map.next_value_seed(Opt(Text(field)))?,
                Known::FilePath => event.file_path = map.next_value_seed(Opt(Text(field)))?,
                Known::User => event.user = map.next_value_seed(Opt(Text(field)))?,
                Known::Host => event.host = map.next_value_seed(Opt(Text(field)))?,
            }
        }
        Ok(event)
    }
}

fn insert(extra: &mut Map<String, Value>, name: String, value: Value) {
    extra.insert(name, value);
}

/// `null` or the value of the inner visitor.
struct Opt<V>(V);

impl<'de, V: Visitor<'de>> DeserializeSeed<'de> for Opt<V> {
    type Value = Option<V::Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Opt<V> {
    type Value = Option<V::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self.0).map(Some)
    }
}

struct Text(&'static str);

impl Visitor<'_> for Text {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` to be a string", self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
}

struct Stamp;

impl Visitor<'_> for Stamp {
    type Value = DateTime<Utc>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`timestamp` to be an RFC 3339 time")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        parse_rfc3339(v).ok_or_else(|| {
            E::custom(format_args!(
                "field `timestamp`: expected an RFC 3339 time like `2026-03-07T12:00:00Z`, found `{v}`"
            ))
        })
    }
}

struct Sev;

impl Visitor<'_> for Sev {
    type Value = Severity;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`severity` to be a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        v.parse()
            .map_err(|err| E::custom(format_args!("field `severity`: {err}")))
    }
}

struct Ip;

impl Visitor<'_> for Ip {
    type Value = IpAddr;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`srcIp` to be a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        v.parse::<IpAddr>().map(canonical_ip).map_err(|_| {
            E::custom(format_args!(
                "field `srcIp`: expected an IPv4 or IPv6 address, found `{v}`"
            ))
        })
    }
}

struct Confidence;

impl Confidence {
    fn check<E: de::Error>(v: f64) -> Result<f64, E> {
        if (0.0..=1.0).contains(&v) {
            Ok(v)
        } else {
            Err(E::custom(format_args!(
                "field `confidence`: expected a number from 0.0 to 1.0, found `{v}`"
            )))
        }
    }
}

impl Visitor<'_> for Confidence {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`confidence` to be a number")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Self::check(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Self::check(v as f64)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Self::check(v as f64)
    }
}

/// A non-negative integer that fits `T`.
struct Int<T>(&'static str, PhantomData<T>);

impl<T> Int<T>
where
    T: TryFrom<u64> + Into<u64> + Bounded,
{
    fn out_of_range<E: de::Error>(&self, found: impl fmt::Display) -> E {
        E::custom(format_args!(
            "field `{}`: expected an integer from 0 to {}, found `{found}`",
            self.0,
            T::MAX.into()
        ))
    }
}

/// Largest value of an unsigned integer type.
trait Bounded: Sized {
    const MAX: Self;
}

impl Bounded for u16 {
    const MAX: Self = u16::MAX;
}

impl Bounded for u32 {
    const MAX: Self = u32::MAX;
}

impl<T> Visitor<'_> for Int<T>
where
    T: TryFrom<u64> + Into<u64> + Bounded,
{
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` to be an integer", self.0)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        if v <= T::MAX.into() {
            Ok(v)
        } else {
            Err(self.out_of_range(v))
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| self.out_of_range(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        Err(self.out_of_range(v))
    }
}

/// Parses RFC 3339, with a fast path for `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
pub(crate) fn parse_rfc3339(text: &str) -> Option<DateTime<Utc>> {
    fast_rfc3339(text.as_bytes()).or_else(|| {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    })
}

fn digits(bytes: &[u8], range: std::ops::Range<usize>) -> Option<u32> {
    let part = bytes.get(range)?;
    let mut value = 0u32;
    for &b in part {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
    }
    Some(value)
}

fn fast_rfc3339(b: &[u8]) -> Option<DateTime<Utc>> {
    if b.len() < 20
        || b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't'))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    let year = digits(b, 0..4)?;
    let month = digits(b, 5..7)?;
    let day = digits(b, 8..10)?;
    let hour = digits(b, 11..13)?;
    let minute = digits(b, 14..16)?;
    let second = digits(b, 17..19)?;
    let mut pos = 19;
    let mut nanos = 0u32;
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        let start = pos;
        while let Some(d) = b.get(pos).filter(|d| d.is_ascii_digit()) {
            if pos - start < 9 {
                nanos = nanos * 10 + u32::from(d - b'0');
            }
            pos += 1;
        }
        let count = pos - start;
        if count == 0 {
            return None;
        }
        for _ in count..9 {
            nanos *= 10;
        }
    }
    let offset_secs: i64 = match b.get(pos..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let hours = digits(b, pos + 1..pos + 3)?;
            let minutes = digits(b, pos + 4..pos + 6)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let secs = i64::from(hours * 3600 + minutes * 60);
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    if second > 59 {
        return None; // leap seconds: let chrono decide
    }
    let naive = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?
        .and_hms_nano_opt(hour, minute, second, nanos)?;
    naive
        .and_utc()
        .checked_sub_signed(TimeDelta::seconds(offset_secs))
}
