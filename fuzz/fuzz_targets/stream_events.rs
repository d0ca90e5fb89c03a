//! Arbitrary bytes as one event of the server's stream, as an agent reads it: the first line
//! is the SSE event name, the rest its data. Never a panic; an event the agent accepts reads
//! back the same from what the server writes for it; a policy event's documents (as sent and
//! as signed) go through the strict policy reader.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_engine::Policy;
use policy_engine::protocol::{
    APPROVAL_EVENT, BLOCK_EVENT, FleetEvent, POLICY_EVENT, PolicyEvent, SHADOW_END_EVENT,
    SHADOW_EVENT, ShadowEndEvent, ShadowEvent, UNBLOCK_EVENT,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// An accepted payload, written and read again, writes the same (times are read in any form
/// and written in one: the written forms are compared).
fn round_trip<T: Serialize + DeserializeOwned>(what: &str, data: &str) -> Option<T> {
    let event: T = serde_json::from_str(data).ok()?;
    let written = serde_json::to_string(&event).expect("an event serializes");
    let again: T = serde_json::from_str(&written)
        .unwrap_or_else(|e| panic!("{what}: {written} was read once, then: {e}"));
    assert_eq!(
        serde_json::to_string(&again).expect("an event serializes"),
        written,
        "{what}: reading it back changed the event"
    );
    Some(event)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (name, data) = text.split_once('\n').unwrap_or((text, ""));
    match FleetEvent::parse(name, data) {
        Ok(Some(event)) => {
            assert_eq!(event.name(), name);
            let again = FleetEvent::parse(event.name(), &event.data())
                .unwrap_or_else(|e| panic!("{name}: {} was read once, then: {e}", event.data()))
                .expect("a fleet event name");
            assert_eq!(
                again.data(),
                event.data(),
                "reading it back changed the event"
            );
        }
        Ok(None) => assert!(![BLOCK_EVENT, UNBLOCK_EVENT, APPROVAL_EVENT].contains(&name)),
        Err(e) => assert!(e.to_string().contains(&format!("`{name}`")), "{e}"),
    }
    match name {
        POLICY_EVENT => {
            if let Some(event) = round_trip::<PolicyEvent>(name, data) {
                if let Some(signed) = event.signed.clone() {
                    let _ = Policy::from_value(&event.signed_document(signed.rules));
                }
                let _ = Policy::from_value(&event.into_document());
            }
        }
        SHADOW_EVENT => {
            if let Some(event) = round_trip::<ShadowEvent>(name, data) {
                let _ = Policy::from_value(&event.into_document());
            }
        }
        SHADOW_END_EVENT => {
            let _ = round_trip::<ShadowEndEvent>(name, data);
        }
        _ => {}
    }
});
