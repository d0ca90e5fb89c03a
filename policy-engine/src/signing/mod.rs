//! Signed policy versions (feature `signing`): an operator signs a policy offline with an
//! Ed25519 key that never reaches the server; agents pinned to the public key refuse anything
//! else.
//!
//! What is signed is [`payload`]: a domain-separation line followed by the canonical JSON
//! ([`canonical`]) of `{"orgId", "policy", "version"}`, where `policy` is the *validated*
//! document in its normalized form ([`Policy::to_document`], defaults filled in, `org_id`
//! left out because the org is bound on its own). So whitespace, key order or an omitted
//! default in the file the operator wrote do not matter, and the signature covers exactly the
//! rules an agent will run, for one org and one version.
//!
//! ```
//! use policy_engine::signing::{KeyRing, SigningKey};
//! use policy_engine::{Policy, PolicyVersion};
//! let key = SigningKey::generate().unwrap();
//! let policy = Policy::from_json(br#"{"name":"p","rules":[{"type":"block_ip","config":
//!     {"trigger":"brute_force","threshold":5,"duration":"1h","scope":"host"}}]}"#).unwrap();
//! let signature = key.sign("acme", PolicyVersion::new(7), &policy);
//!
//! let ring = KeyRing::new(vec![key.public_key()]);
//! assert_eq!(&ring.verify("acme", PolicyVersion::new(7), &policy, &signature).unwrap(), key.id());
//! // The same signature for another version or org is refused.
//! assert!(ring.verify("acme", PolicyVersion::new(8), &policy, &signature).is_err());
//! assert!(ring.verify("other", PolicyVersion::new(7), &policy, &signature).is_err());
//! ```

pub mod canonical;
mod error;
mod keys;

pub use error::SignatureError;
pub use keys::{KeyId, KeyRing, PublicKey, SigningKey};

use crate::policy::{Policy, PolicyVersion};
use crate::protocol::RolloutTerms;

/// The first line of every signed payload: keeps these signatures from being valid for any
/// other message an operator's key might sign.
pub const DOMAIN: &[u8] = b"policy-engine signed policy v1\n";

/// The exact bytes signed for `policy` as version `version` of org `org_id`, under `rollout`
/// terms when there are any (`"rollout"` is absent from the payload otherwise, so signatures
/// without terms keep their bytes).
pub fn payload(
    org_id: &str,
    version: PolicyVersion,
    policy: &Policy,
    rollout: Option<&RolloutTerms>,
) -> Vec<u8> {
    let mut document = policy.to_document();
    document.org_id = None;
    let mut body = serde_json::json!({
        "orgId": org_id,
        "policy": document,
        "version": version,
    });
    if let (Some(terms), Some(map)) = (rollout, body.as_object_mut()) {
        map.insert(
            "rollout".to_owned(),
            serde_json::to_value(terms).unwrap_or_default(),
        );
    }
    let mut bytes = DOMAIN.to_vec();
    canonical::write(&body, &mut bytes);
    bytes
}
