//! Tokens and who they speak for: generation, SHA-256 hashing, constant-time lookup in memory,
//! roles and org scoping. Storing tokens is the store's; this module only knows principals.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::RwLock;
use std::time::Duration;

use policy_engine::DEFAULT_ORG;
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::ratelimit::{KeyedLimit, RetryAfter, address_key};

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The bootstrap admin: every org.
    GlobalAdmin,
    /// An admin confined to one org.
    OrgAdmin {
        /// The org.
        org_id: String,
    },
    /// One enrolled agent.
    Agent {
        /// The agent.
        agent_id: String,
        /// Its org.
        org_id: String,
    },
}

impl Principal {
    /// The name shown as `actor` in the audit and `by`/`decidedBy` in answers: the agent id,
    /// `admin` (global) or `admin:<org>`.
    pub fn actor(&self) -> String {
        match self {
            Self::GlobalAdmin => "admin".to_owned(),
            Self::OrgAdmin { org_id } => format!("admin:{org_id}"),
            Self::Agent { agent_id, .. } => agent_id.clone(),
        }
    }

    /// The org an admin is confined to; `None` for the global admin (every org).
    pub fn confined_org(&self) -> Option<&str> {
        match self {
            Self::GlobalAdmin => None,
            Self::OrgAdmin { org_id } | Self::Agent { org_id, .. } => Some(org_id),
        }
    }

    /// Requires an admin (global or org).
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Self::GlobalAdmin | Self::OrgAdmin { .. } => Ok(()),
            Self::Agent { .. } => Err(ApiError::forbidden("this endpoint needs an admin token")),
        }
    }

    /// Requires the token of agent `id` itself; `what` names the thing only it may send, for
    /// the message. Returns the agent's org.
    pub fn require_agent(&self, id: &str, what: &str) -> Result<String, ApiError> {
        match self {
            Self::Agent { agent_id, org_id } if agent_id == id => Ok(org_id.clone()),
            _ => Err(ApiError::forbidden(format!(
                "only the token of agent `{id}` may send its {what}"
            ))),
        }
    }

    /// The org a read acts on: a global admin names it with `?org_id=` (default `default`);
    /// org admins and agents are bound to theirs and may only name it.
    pub fn read_org(&self, requested: Option<&str>) -> Result<String, ApiError> {
        match self {
            Self::GlobalAdmin => Ok(requested.unwrap_or(DEFAULT_ORG).to_owned()),
            Self::OrgAdmin { org_id } | Self::Agent { org_id, .. } => match requested {
                Some(other) if other != org_id => Err(outside_org(org_id, other)),
                _ => Ok(org_id.clone()),
            },
        }
    }

    /// The org a write by an admin acts on, named in the body (default `default` for the global
    /// admin, the admin's own org otherwise).
    pub fn write_org(&self, requested: Option<&str>) -> Result<String, ApiError> {
        self.require_admin()?;
        self.read_org(requested)
    }

    /// Whether this principal may act on things of `org`.
    pub fn check_org(&self, org: &str) -> Result<(), ApiError> {
        match self {
            Self::GlobalAdmin => Ok(()),
            Self::OrgAdmin { org_id } | Self::Agent { org_id, .. } if org_id == org => Ok(()),
            Self::OrgAdmin { org_id } | Self::Agent { org_id, .. } => Err(outside_org(org_id, org)),
        }
    }
}

/// The org a write names: the body's `org_id`, else the query's `?org_id=`. A body and a query
/// naming two different orgs is a 400: which one was meant is a guess the server does not make
/// (as with a signed file, whose org must match both).
pub fn named_org<'a>(
    body: Option<&'a str>,
    query: Option<&'a str>,
) -> Result<Option<&'a str>, ApiError> {
    match (body, query) {
        (Some(body), Some(query)) if body != query => Err(ApiError::bad_request(format!(
            "`?org_id={query}` names another org than the body's `org_id` (`{body}`): name it once"
        ))),
        _ => Ok(body.or(query)),
    }
}

fn outside_org(own: &str, other: &str) -> ApiError {
    ApiError::forbidden(format!(
        "this token belongs to org `{own}` and cannot act on org `{other}`"
    ))
}

/// The token of an `Authorization` value: the scheme is `Bearer` in any case (HTTP schemes are
/// case-insensitive), then spaces, then a non-empty token.
///
/// ```
/// use reference_server::auth::bearer_token;
/// assert_eq!(bearer_token("BEARER abc"), Some("abc"));
/// assert_eq!(bearer_token("bearer   abc "), Some("abc"));
/// assert_eq!(bearer_token("Basic abc"), None);
/// assert_eq!(bearer_token("Bearerabc"), None);
/// ```
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    Some(rest.trim()).filter(|t| !t.is_empty())
}

/// Shortest global admin token accepted from the configuration (`POLICY_ADMIN_TOKEN`).
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// Refuses a configured admin token shorter than [`MIN_ADMIN_TOKEN_CHARS`], with the fix.
pub fn check_admin_token(token: &str) -> Result<(), String> {
    let chars = token.chars().count();
    if chars < MIN_ADMIN_TOKEN_CHARS {
        return Err(format!(
            "the admin token (POLICY_ADMIN_TOKEN or --admin-token) has {chars} characters; it \
             needs at least {MIN_ADMIN_TOKEN_CHARS} (e.g. `openssl rand -hex 32`), or leave it \
             unset on a fresh data dir to have one generated"
        ));
    }
    Ok(())
}

/// The failed-authentication budget per source address (IPv6 per /64): past it, a request
/// whose token fails gets 429 with `Retry-After` instead of 401. A valid token is never refused,
/// so an attacker sharing an address (a NAT) with agents cannot lock them out.
#[derive(Debug)]
pub struct FailedAuth {
    failures: Option<KeyedLimit<IpAddr>>,
    audited: Option<KeyedLimit<IpAddr>>,
}

/// An address past its failed-authentication budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    /// When it may try again.
    pub retry_after: RetryAfter,
    /// Whether this is the first refusal in its period (write the audit entry: one per address
    /// and period, not one per attempt).
    pub audit: bool,
}

/// Most addresses whose failures are remembered.
const MAX_TRACKED_ADDRESSES: usize = 100_000;

impl FailedAuth {
    /// `per_minute` failures per address, refilled over a minute; 0 turns the limit off.
    pub fn new(per_minute: u32) -> Self {
        let minute = Duration::from_secs(60);
        Self {
            failures: KeyedLimit::new(per_minute, minute, MAX_TRACKED_ADDRESSES),
            audited: KeyedLimit::new(1, minute, MAX_TRACKED_ADDRESSES),
        }
    }

    /// Counts a failed authentication from `peer`: `Ok` (answer 401) within the budget.
    pub fn failed(&self, peer: IpAddr) -> Result<(), Lockout> {
        let Some(failures) = &self.failures else {
            return Ok(());
        };
        let key = address_key(peer);
        failures.check(&key).map_err(|retry_after| Lockout {
            retry_after,
            audit: self.audited.as_ref().is_some_and(|a| a.check(&key).is_ok()),
        })
    }
}

/// SHA-256 of a token: what is stored and looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes a token.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// A stored hash.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// A new random token: a role prefix and 256 random bits in hex.
pub fn generate_token(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("{prefix}_{}", hex::encode(bytes))
}

/// Random hex for ids.
pub fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    let raw: Vec<u8> = (0..bytes).map(|_| rng.random()).collect();
    hex::encode(raw)
}

/// Every token hash in memory, so that authentication never waits for the database.
#[derive(Debug, Default)]
pub struct TokenCache {
    by_hash: RwLock<HashMap<TokenHash, (TokenHash, Principal)>>,
    /// On a store shared by replicas: the budget of store reads for tokens not held.
    miss_reads: Option<KeyedLimit<()>>,
}

/// Store reads of tokens a shared cache does not hold, per second and replica: a flood of
/// unknown tokens costs the database at most this many reads a second (past it, such a token
/// is `401 unknown token` until its notice arrives, as a token no replica stored is).
pub const MISS_READS_PER_SEC: u32 = 200;

impl TokenCache {
    /// A cache of `tokens` (every stored token, at start).
    pub fn new(tokens: impl IntoIterator<Item = (TokenHash, Principal)>) -> Self {
        let cache = Self::default();
        for (hash, principal) in tokens {
            cache.insert(hash, principal);
        }
        cache
    }

    /// The cache of a store shared with other replicas: a token it does not hold may have just
    /// been stored by another replica, so a miss is read from the store, at most
    /// [`MISS_READS_PER_SEC`] a second ([`TokenCache::may_read_miss`]).
    pub fn shared(self) -> Self {
        self.reading_misses(MISS_READS_PER_SEC, Duration::from_secs(1))
    }

    /// As [`TokenCache::shared`], with `burst` store reads refilled over `per`.
    pub fn reading_misses(self, burst: u32, per: Duration) -> Self {
        Self {
            // One key; room for two, as a full limiter refuses even a tracked key.
            miss_reads: KeyedLimit::new(burst, per, 2),
            ..self
        }
    }

    /// Whether a token this cache does not hold may be looked up in the store now (a shared
    /// cache within its budget of such reads); takes one read of the budget.
    pub fn may_read_miss(&self) -> bool {
        self.miss_reads
            .as_ref()
            .is_some_and(|reads| reads.check(&()).is_ok())
    }

    /// Adds a token (after it is stored).
    pub fn insert(&self, hash: TokenHash, principal: Principal) {
        if let Ok(mut map) = self.by_hash.write() {
            map.insert(hash, (hash, principal));
        }
    }

    /// Replaces every token with `tokens` (all stored tokens, read again: some may have been
    /// revoked by another server replica).
    pub fn replace(&self, tokens: impl IntoIterator<Item = (TokenHash, Principal)>) {
        let map: HashMap<TokenHash, (TokenHash, Principal)> = tokens
            .into_iter()
            .map(|(hash, principal)| (hash, (hash, principal)))
            .collect();
        if let Ok(mut current) = self.by_hash.write() {
            *current = map;
        }
    }

    /// The principal of the `Authorization` header's token, or the hash of a well-formed token
    /// this cache does not hold (another replica may have just stored it): 401 when the header
    /// is missing or not a bearer token.
    pub fn find(&self, header: Option<&str>) -> Result<Found, ApiError> {
        let header = header.ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        let token = bearer_token(header).ok_or_else(|| {
            ApiError::unauthorized("expected an `Authorization: Bearer <token>` header")
        })?;
        let hash = TokenHash::of(token);
        let map = self
            .by_hash
            .read()
            .map_err(|_| ApiError::internal("token cache poisoned"))?;
        // The map finds a candidate by hash; the stored hash is then compared in constant time,
        // so no timing depends on how much of a guessed token is right.
        Ok(match map.get(&hash) {
            Some((stored, principal)) if bool::from(stored.0.ct_eq(&hash.0)) => {
                Found::Known(principal.clone())
            }
            _ => Found::Unknown(hash),
        })
    }
}

/// What [`TokenCache::find`] found.
#[derive(Debug)]
pub enum Found {
    /// A cached token's principal.
    Known(Principal),
    /// A token the cache does not hold, by its hash.
    Unknown(TokenHash),
}

/// The 401 of a token no store holds.
pub fn unknown_token() -> ApiError {
    ApiError::unauthorized("unknown token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_shared_cache_reads_misses_and_within_its_budget() {
        assert!(!TokenCache::default().may_read_miss(), "one server: never");
        let shared = TokenCache::default().reading_misses(3, Duration::from_secs(3600));
        let reads: Vec<bool> = (0..5).map(|_| shared.may_read_miss()).collect();
        assert_eq!(reads, [true, true, true, false, false]);
        // A cached token is found without the budget.
        let token = generate_token("agt");
        shared.insert(
            TokenHash::of(&token),
            Principal::Agent {
                agent_id: "a1".to_owned(),
                org_id: "acme".to_owned(),
            },
        );
        let header = format!("Bearer {token}");
        assert!(matches!(
            shared.find(Some(&header)),
            Ok(Found::Known(Principal::Agent { agent_id, .. })) if agent_id == "a1"
        ));
        let unknown = format!("Bearer {}", generate_token("agt"));
        assert!(matches!(shared.find(Some(&unknown)), Ok(Found::Unknown(_))));
        assert_eq!(unknown_token().message, "unknown token");
    }
}
