//! Log timestamps: classic syslog (`Mar  7 12:00:01`, no year) and RFC 3339 (rsyslog high
//! precision, journalctl `-o short-iso`), parsed by hand because they sit on the hot path.

use chrono::{DateTime, Utc};

/// A classic syslog timestamp: month, day and time of day, but no year and no zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SyslogStamp {
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
    /// Seconds since midnight.
    pub secs_of_day: u32,
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Reads `Mmm dd hh:mm:ss` (day padded with a space, a zero, or not at all; an optional
/// fraction after the seconds) and returns the stamp and the rest of the line after the space.
pub(crate) fn syslog_prefix(line: &str) -> Option<(SyslogStamp, &str)> {
    let b = line.as_bytes();
    let name = b.get(..3)?;
    let month = MONTHS.iter().position(|m| m.as_slice() == name)? as u32 + 1;
    if b.get(3) != Some(&b' ') {
        return None;
    }
    let mut i = 4;
    if b.get(i) == Some(&b' ') {
        i += 1;
    }
    let mut day = 0u32;
    let day_start = i;
    while let Some(d) = b.get(i).filter(|c| c.is_ascii_digit()) {
        // Saturating: a hostile line may carry any number of digits here (found by fuzzing).
        day = day.saturating_mul(10).saturating_add(u32::from(d - b'0'));
        i += 1;
    }
    if i == day_start || i - day_start > 2 || !(1..=31).contains(&day) || b.get(i) != Some(&b' ') {
        return None;
    }
    i += 1;
    let secs_of_day = clock(b.get(i..i + 8)?)?;
    i += 8;
    i = skip_fraction(b, i);
    if b.get(i) != Some(&b' ') {
        return None;
    }
    let rest = line.get(i + 1..)?;
    Some((
        SyslogStamp {
            month,
            day,
            secs_of_day,
        },
        rest,
    ))
}

/// Reads an RFC 3339 timestamp (`2026-03-07T12:00:01.123456+01:00`, `...Z`, or journalctl's
/// `+0100`) at the start of the line and returns it with the rest of the line after the space.
pub(crate) fn rfc3339_prefix(line: &str) -> Option<(DateTime<Utc>, &str)> {
    let end = line.find(' ')?;
    let stamp = rfc3339(line.get(..end)?)?;
    Some((stamp, line.get(end + 1..)?))
}

/// Parses one RFC 3339 timestamp, also accepting a zone offset without the colon.
pub(crate) fn rfc3339(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    let year = digits(b.get(0..4)?)? as i64;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let month = digits(b.get(5..7)?)?;
    let day = digits(b.get(8..10)?)?;
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let secs_of_day = clock(b.get(11..19)?)?;
    let mut i = 19;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let mut scale = 100_000_000u32;
        while let Some(d) = b.get(i).filter(|c| c.is_ascii_digit()) {
            nanos += u32::from(d - b'0') * scale;
            scale /= 10;
            i += 1;
        }
    }
    let offset_secs: i64 = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) => {
            let hours = digits(b.get(i + 1..i + 3)?)?;
            let minutes = match (b.get(i + 3), b.len() - i) {
                (Some(b':'), 6) => digits(b.get(i + 4..i + 6)?)?,
                (Some(_), 5) => digits(b.get(i + 3..i + 5)?)?,
                (None, 3) => 0,
                _ => return None,
            };
            if hours > 23 || minutes > 59 {
                return None;
            }
            let secs = i64::from(hours * 3600 + minutes * 60);
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + i64::from(secs_of_day) - offset_secs;
    DateTime::from_timestamp(secs, nanos)
}

impl SyslogStamp {
    /// The instant this stamp names in `year`, reading the wall time as UTC.
    pub(crate) fn in_year(self, year: i32) -> Option<DateTime<Utc>> {
        let secs = days_from_civil(i64::from(year), self.month, self.day) * 86_400
            + i64::from(self.secs_of_day);
        DateTime::from_timestamp(secs, 0)
    }
}

/// `hh:mm:ss` as seconds since midnight (a leap second 60 is accepted and folded into 59).
fn clock(b: &[u8]) -> Option<u32> {
    if b.get(2) != Some(&b':') || b.get(5) != Some(&b':') {
        return None;
    }
    let h = digits(b.get(0..2)?)?;
    let m = digits(b.get(3..5)?)?;
    let s = digits(b.get(6..8)?)?;
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(h * 3600 + m * 60 + s.min(59))
}

fn skip_fraction(b: &[u8], mut i: usize) -> usize {
    if b.get(i) == Some(&b'.') {
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    i
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_with_many_digits_is_rejected_not_overflowed() {
        // Regression: fuzzing (sshd_lines) found `day * 10` overflowing on a long digit run.
        let line = format!("Mar  {} 12:00:03 host sshd[1]: x", "7".repeat(40));
        assert!(syslog_prefix(&line).is_none());
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn rfc3339_forms_agree_with_chrono() {
        for (input, expected) in [
            ("2026-03-07T12:00:01Z", "2026-03-07T12:00:01Z"),
            (
                "2026-03-07T12:00:01.123456+00:00",
                "2026-03-07T12:00:01.123456Z",
            ),
            (
                "2015-04-16T18:02:50.321974+02:00",
                "2015-04-16T16:02:50.321974Z",
            ),
            ("2024-02-29T23:59:59-0130", "2024-03-01T01:29:59Z"),
            ("2000-01-01T00:00:00+01", "1999-12-31T23:00:00Z"),
        ] {
            assert_eq!(rfc3339(input), Some(utc(expected)), "{input}");
        }
    }

    #[test]
    fn rfc3339_rejects_garbage() {
        for input in [
            "2026-13-07T12:00:01Z",
            "2026-03-07T25:00:01Z",
            "2026-03-07T12:00:01",
            "2026-03-07T12:00:01+0",
            "2026-03-07T12:00:01Zjunk",
            "x026-03-07T12:00:01Z",
        ] {
            assert_eq!(rfc3339(input), None, "{input}");
        }
    }

    #[test]
    fn syslog_prefix_reads_padded_and_unpadded_days() {
        let (stamp, rest) = syslog_prefix("Mar  7 12:00:01 host sshd[1]: x").unwrap();
        assert_eq!(
            stamp,
            SyslogStamp {
                month: 3,
                day: 7,
                secs_of_day: 43_201
            }
        );
        assert_eq!(rest, "host sshd[1]: x");
        let (stamp, _) = syslog_prefix("Feb 7 16:01:07 h sshd[1]: x").unwrap();
        assert_eq!((stamp.month, stamp.day), (2, 7));
        let (stamp, _) = syslog_prefix("Jul 05 18:22:44.123 h sshd[1]: x").unwrap();
        assert_eq!((stamp.month, stamp.day, stamp.secs_of_day), (7, 5, 66_164));
        assert_eq!(stamp.in_year(2026), Some(utc("2026-07-05T18:22:44Z")));
        assert_eq!(syslog_prefix("Foo  7 12:00:01 h"), None);
        assert_eq!(syslog_prefix("Mar 32 12:00:01 h"), None);
        assert_eq!(syslog_prefix("Mar  7 12:00 h"), None);
    }
}
