//! Building actions on an event's target: `pid` for kill, `filePath` for quarantine, `srcIp` for
//! a block, the host for isolation; and the built-in names a `custom` rule may use.

use serde_json::{Map, Value};

use policy_engine::{Action, PolicyDuration, ResponseAction, Scope, Severity, ThreatEvent};

/// The event lacks the field an action needs (its contract name).
pub(crate) struct MissingField(pub(crate) &'static str);

/// Duration and scope of a block that the rule does not state itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockDefaults {
    pub(crate) duration: PolicyDuration,
    pub(crate) scope: Scope,
}

/// `action` applied to the event's target.
pub(crate) fn response(
    action: ResponseAction,
    event: &ThreatEvent,
    block: BlockDefaults,
) -> Result<Action, MissingField> {
    match action {
        ResponseAction::KillProcess => Ok(Action::KillProcess {
            pid: event.pid.ok_or(MissingField("pid"))?,
            process: event.process.clone(),
        }),
        ResponseAction::QuarantineFile => Ok(Action::QuarantineFile {
            path: event.file_path.clone().ok_or(MissingField("filePath"))?,
        }),
        ResponseAction::BlockIp => Ok(Action::BlockIp {
            ip: event.src_ip.ok_or(MissingField("srcIp"))?,
            duration: block.duration,
            scope: block.scope,
        }),
        ResponseAction::IsolateHost => Ok(Action::IsolateHost {
            host: event.host.clone(),
        }),
    }
}

/// A parameter of a `custom` rule that does not fit the built-in action it names.
pub(crate) struct BadParam(pub(crate) String);

/// What a `custom` rule's `action` becomes: a typed built-in action on the event's target when
/// it names one (`params` may set `duration`/`scope` for `block_ip`, `severity`/`channels` for
/// `alert`), otherwise [`Action::Custom`] with the params.
pub(crate) fn custom(
    name: &str,
    params: Option<&Map<String, Value>>,
    event: &ThreatEvent,
    block: BlockDefaults,
) -> Result<Result<Action, MissingField>, BadParam> {
    if let Ok(builtin) = name.parse::<ResponseAction>() {
        let mut block = block;
        if builtin == ResponseAction::BlockIp {
            if let Some(duration) = param_str(params, "duration")? {
                block.duration = duration
                    .parse()
                    .map_err(|err| BadParam(format!("`params.duration`: {err}")))?;
            }
            if let Some(scope) = param_str(params, "scope")? {
                block.scope = match scope {
                    "host" => Scope::Host,
                    "fleet" => Scope::Fleet,
                    other => {
                        return Err(BadParam(format!(
                            "`params.scope`: expected `host` or `fleet`, found `{other}`"
                        )));
                    }
                };
            }
        }
        return Ok(response(builtin, event, block));
    }
    if name == "alert" {
        let severity = match param_str(params, "severity")? {
            Some(text) => text
                .parse()
                .map_err(|err| BadParam(format!("`params.severity`: {err}")))?,
            None => event.severity.unwrap_or(Severity::Info),
        };
        let channels = match params.and_then(|p| p.get("channels")) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    BadParam("`params.channels`: expected an array of strings".to_owned())
                })?,
            Some(_) => {
                return Err(BadParam(
                    "`params.channels`: expected an array of strings".to_owned(),
                ));
            }
        };
        return Ok(Ok(Action::Alert {
            severity,
            count: 1,
            channels,
        }));
    }
    Ok(Ok(Action::Custom {
        name: name.to_owned(),
        params: params.cloned().unwrap_or_default(),
    }))
}

fn param_str<'a>(
    params: Option<&'a Map<String, Value>>,
    key: &str,
) -> Result<Option<&'a str>, BadParam> {
    match params.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(BadParam(format!(
            "`params.{key}`: expected a string, found `{other}`"
        ))),
    }
}
