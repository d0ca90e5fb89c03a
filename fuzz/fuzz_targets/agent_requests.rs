//! Arbitrary bytes as the bodies agents send the server (enroll, heartbeat, report), read as
//! the server reads them: strict JSON within the body limits, then each request's `from_value`.
//! Never a panic; a refusal names at least one error; what the server accepts reads back the
//! same from what the agent library writes for it (what the server takes, an agent can say).
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_engine::ValidationError;
use policy_engine::policy::json::{JsonLimits, parse_strict};
use policy_engine::protocol::{EnrollRequest, HeartbeatRequest, Report};
use serde::Serialize;
use serde_json::Value;

type Reader<T> = fn(&Value) -> Result<T, Vec<ValidationError>>;

fn check<T: Serialize>(what: &str, read: Reader<T>, body: &Value) {
    let request = match read(body) {
        Ok(request) => request,
        Err(errors) => {
            assert!(!errors.is_empty(), "{what}: refused without an error");
            return;
        }
    };
    // Times are read with any offset and fraction and written in one form: compare the
    // written forms.
    let sent = serde_json::to_value(&request).expect("a request serializes");
    let again = read(&sent)
        .unwrap_or_else(|errors| panic!("{what}: {sent} was accepted once, then {errors:?}"));
    let resent = serde_json::to_value(&again).expect("a request serializes");
    assert_eq!(sent, resent, "{what}: reading it back changed the request");
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = parse_strict(data, JsonLimits::default()) else {
        return;
    };
    check("enroll", EnrollRequest::from_value, &body);
    check("heartbeat", HeartbeatRequest::from_value, &body);
    check("report", Report::from_value, &body);
});
