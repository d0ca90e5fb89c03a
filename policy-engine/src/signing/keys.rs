//! Ed25519 keys: the operator's signing key (PKCS#8 PEM, kept off the server), the public keys
//! agents pin (SubjectPublicKeyInfo PEM), their ids, and the ring of pinned keys that verifies.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer as _, pkcs8::spki::der::pem::LineEnding};
use rand::TryRngCore as _;
use sha2::{Digest, Sha256};

use super::{SignatureError, payload};
use crate::policy::{Policy, PolicyVersion};
use crate::protocol::{PolicySignature, RolloutTerms, SignatureAlgorithm};

/// A key's id: the first 8 bytes of the SHA-256 of its 32-byte public key, as 16 hex digits.
/// Signatures name the key that made them, so an agent with several pinned keys (rotation)
/// knows which one to check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    fn of(public: &ed25519_dalek::VerifyingKey) -> Self {
        let digest = Sha256::digest(public.as_bytes());
        Self(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The operator's private signing key.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    id: KeyId,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new key from the operating system's random number generator.
    pub fn generate() -> Result<Self, SignatureError> {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut secret)
            .map_err(|e| SignatureError::Key {
                what: "new key".into(),
                reason: format!("no randomness from the operating system: {e}"),
            })?;
        let key = ed25519_dalek::SigningKey::from_bytes(&secret);
        secret.fill(0);
        Ok(Self::from_dalek(key))
    }

    /// Reads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`), as written by
    /// [`SigningKey::to_pem`] or `openssl genpkey -algorithm ed25519`.
    pub fn from_pem(pem: &str, what: &str) -> Result<Self, SignatureError> {
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(Self::from_dalek)
            .map_err(|e| SignatureError::Key {
                what: what.to_owned(),
                reason: format!("not an Ed25519 private key in PKCS#8 PEM ({e})"),
            })
    }

    /// The key as PKCS#8 PEM. Keep it secret: whoever has it can sign policies.
    pub fn to_pem(&self) -> Result<String, SignatureError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|e| SignatureError::Key {
                what: self.id.to_string(),
                reason: format!("cannot encode the key: {e}"),
            })
    }

    /// The public half, for agents to pin.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
            id: self.id.clone(),
        }
    }

    /// The key's id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// Signs `policy` as version `version` of org `org_id`.
    pub fn sign(&self, org_id: &str, version: PolicyVersion, policy: &Policy) -> PolicySignature {
        self.sign_with_rollout(org_id, version, policy, None)
    }

    /// Signs `policy` as version `version` of org `org_id` under rollout terms (e.g. the
    /// version agents may fall back to); the terms travel inside the signature.
    pub fn sign_with_rollout(
        &self,
        org_id: &str,
        version: PolicyVersion,
        policy: &Policy,
        rollout: Option<RolloutTerms>,
    ) -> PolicySignature {
        let signature = self
            .key
            .sign(&payload(org_id, version, policy, rollout.as_ref()));
        PolicySignature {
            key_id: self.id.to_string(),
            algorithm: SignatureAlgorithm::Ed25519,
            value: BASE64.encode(signature.to_bytes()),
            rollout,
        }
    }

    fn from_dalek(key: ed25519_dalek::SigningKey) -> Self {
        let id = KeyId::of(&key.verifying_key());
        Self { key, id }
    }
}

/// A public key an agent pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: ed25519_dalek::VerifyingKey,
    id: KeyId,
}

impl PublicKey {
    /// Reads a SubjectPublicKeyInfo PEM public key (`-----BEGIN PUBLIC KEY-----`), as written
    /// by [`PublicKey::to_pem`] or `openssl pkey -pubout`. Weak (small-order) keys are refused.
    pub fn from_pem(pem: &str, what: &str) -> Result<Self, SignatureError> {
        let key = ed25519_dalek::VerifyingKey::from_public_key_pem(pem).map_err(|e| {
            SignatureError::Key {
                what: what.to_owned(),
                reason: format!("not an Ed25519 public key in PEM ({e})"),
            }
        })?;
        if key.is_weak() {
            return Err(SignatureError::Key {
                what: what.to_owned(),
                reason: "a weak (small-order) Ed25519 key".into(),
            });
        }
        Ok(Self {
            id: KeyId::of(&key),
            key,
        })
    }

    /// Reads a public key file (PEM), naming the file in any error.
    pub fn from_file(path: &std::path::Path) -> Result<Self, SignatureError> {
        let what = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SignatureError::Key {
            what: what.clone(),
            reason: format!("cannot read it: {e}"),
        })?;
        Self::from_pem(&text, &what)
    }

    /// The key as PEM.
    pub fn to_pem(&self) -> Result<String, SignatureError> {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| SignatureError::Key {
                what: self.id.to_string(),
                reason: format!("cannot encode the key: {e}"),
            })
    }

    /// The key's id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// Whether `signature` is this key's signature over `policy` as `version` of `org_id`
    /// (under the rollout terms the signature carries).
    pub fn verify(
        &self,
        org_id: &str,
        version: PolicyVersion,
        policy: &Policy,
        signature: &PolicySignature,
    ) -> Result<(), SignatureError> {
        let bytes = decode_signature(version, signature)?;
        let signature_value = ed25519_dalek::Signature::from_bytes(&bytes);
        self.key
            .verify_strict(
                &payload(org_id, version, policy, signature.rollout.as_ref()),
                &signature_value,
            )
            .map_err(|_| SignatureError::BadSignature {
                version,
                org_id: org_id.to_owned(),
                key_id: self.id.to_string(),
            })
    }
}

/// The public keys an agent trusts: one in steady state, two while a key is rotated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRing {
    keys: Vec<PublicKey>,
}

impl KeyRing {
    /// A ring of `keys`.
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Self { keys }
    }

    /// Whether no key is pinned (then the agent accepts unsigned policies, as before).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The pinned keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Checks `signature` over `policy` as `version` of `org_id` with the pinned key it names;
    /// answers that key's id.
    pub fn verify(
        &self,
        org_id: &str,
        version: PolicyVersion,
        policy: &Policy,
        signature: &PolicySignature,
    ) -> Result<KeyId, SignatureError> {
        let Some(key) = self.keys.iter().find(|k| k.id.as_str() == signature.key_id) else {
            return Err(SignatureError::UnknownKey {
                version,
                key_id: signature.key_id.clone(),
                pinned: self
                    .keys
                    .iter()
                    .map(|k| k.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        key.verify(org_id, version, policy, signature)?;
        Ok(key.id.clone())
    }
}

fn decode_signature(
    version: PolicyVersion,
    signature: &PolicySignature,
) -> Result<[u8; 64], SignatureError> {
    let SignatureAlgorithm::Ed25519 = signature.algorithm;
    BASE64
        .decode(signature.value.as_bytes())
        .ok()
        .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
        .ok_or(SignatureError::MalformedSignature { version })
}
