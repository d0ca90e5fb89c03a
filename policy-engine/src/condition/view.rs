//! The event fields a condition can name, with the evalexpr type each has when present, and
//! [`EventView`]: one event as conditions see it, shared by every rule that evaluates it.

use std::cell::OnceCell;

use crate::event::ThreatEvent;

/// A typed event field that conditions read by its contract name. Any other name reads the
/// event's `extra` fields, whose types are only known at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Field {
    Id,
    Timestamp,
    Type,
    Severity,
    SeverityLevel,
    Confidence,
    SrcIp,
    DstPort,
    Pid,
    Process,
    FilePath,
    User,
    Host,
}

/// The evalexpr type of a field's value when the event has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Str,
    Int,
    Float,
}

/// A set of [`Field`]s, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub(crate) struct FieldSet(u16);

impl FieldSet {
    pub(crate) fn insert(&mut self, field: Field) {
        self.0 |= field.bit();
    }

    pub(crate) fn contains(self, field: Field) -> bool {
        self.0 & field.bit() != 0
    }

    /// Whether every field of `self` is in `other`.
    pub(crate) fn is_subset(self, other: FieldSet) -> bool {
        self.0 & !other.0 == 0
    }

    /// Whether `self` and `other` share a field.
    pub(crate) fn intersects(self, other: FieldSet) -> bool {
        self.0 & other.0 != 0
    }

    /// The fields not in `self`.
    pub(crate) fn complement(self) -> FieldSet {
        FieldSet(!self.0)
    }
}

impl Field {
    /// The field a condition variable names, `None` for names that read `extra`.
    pub(crate) fn of(name: &str) -> Option<Field> {
        Some(match name {
            "id" => Self::Id,
            "timestamp" => Self::Timestamp,
            "type" => Self::Type,
            "severity" => Self::Severity,
            "severityLevel" => Self::SeverityLevel,
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

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    pub(crate) fn kind(self) -> Kind {
        match self {
            Self::SeverityLevel | Self::DstPort | Self::Pid => Kind::Int,
            Self::Confidence => Kind::Float,
            Self::Id
            | Self::Timestamp
            | Self::Type
            | Self::Severity
            | Self::SrcIp
            | Self::Process
            | Self::FilePath
            | Self::User
            | Self::Host => Kind::Str,
        }
    }
}

/// One event as conditions see it: which fields it has, and the text of `srcIp` and
/// `timestamp`, formatted at most once per event however many rules read them.
pub(crate) struct EventView<'a> {
    pub(crate) event: &'a ThreatEvent,
    present: FieldSet,
    src_ip: OnceCell<String>,
    timestamp: OnceCell<String>,
}

impl<'a> EventView<'a> {
    pub(crate) fn new(event: &'a ThreatEvent) -> Self {
        let mut present = FieldSet::default();
        let mut mark = |field: Field, has: bool| {
            if has {
                present.insert(field);
            }
        };
        mark(Field::Id, event.id.is_some());
        mark(Field::Timestamp, event.timestamp.is_some());
        mark(Field::Type, event.threat_type.is_some());
        mark(Field::Severity, event.severity.is_some());
        mark(Field::SeverityLevel, event.severity.is_some());
        mark(Field::Confidence, true);
        mark(Field::SrcIp, event.src_ip.is_some());
        mark(Field::DstPort, event.dst_port.is_some());
        mark(Field::Pid, event.pid.is_some());
        mark(Field::Process, event.process.is_some());
        mark(Field::FilePath, event.file_path.is_some());
        mark(Field::User, event.user.is_some());
        mark(Field::Host, event.host.is_some());
        Self {
            event,
            present,
            src_ip: OnceCell::new(),
            timestamp: OnceCell::new(),
        }
    }

    /// The fields the event has.
    pub(crate) fn present(&self) -> FieldSet {
        self.present
    }

    /// A string field's value, as the evalexpr context gives it; `""` when absent (callers
    /// check presence first).
    pub(crate) fn text(&self, field: Field) -> &str {
        let event = self.event;
        match field {
            Field::Id => event.id.as_deref().unwrap_or_default(),
            Field::Type => event.threat_type.as_deref().unwrap_or_default(),
            Field::Severity => event.severity.map_or("", |s| s.as_str()),
            Field::Process => event.process.as_deref().unwrap_or_default(),
            Field::FilePath => event.file_path.as_deref().unwrap_or_default(),
            Field::User => event.user.as_deref().unwrap_or_default(),
            Field::Host => event.host.as_deref().unwrap_or_default(),
            Field::SrcIp => self
                .src_ip
                .get_or_init(|| event.src_ip.map(|ip| ip.to_string()).unwrap_or_default()),
            Field::Timestamp => self.timestamp.get_or_init(|| {
                event
                    .timestamp
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                    .unwrap_or_default()
            }),
            Field::SeverityLevel | Field::Confidence | Field::DstPort | Field::Pid => "",
        }
    }

    /// An integer field's value; 0 when absent.
    pub(crate) fn int(&self, field: Field) -> i64 {
        let event = self.event;
        match field {
            Field::SeverityLevel => event.severity.map_or(0, |s| i64::from(s.level())),
            Field::DstPort => event.dst_port.map_or(0, i64::from),
            Field::Pid => event.pid.map_or(0, i64::from),
            _ => 0,
        }
    }

    /// `confidence`.
    pub(crate) fn confidence(&self) -> f64 {
        self.event.confidence
    }
}
