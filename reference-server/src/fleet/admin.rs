//! What an admin token may ask about itself (for the console): who it is, and which orgs it
//! may pick.

use policy_engine::DEFAULT_ORG;
use serde::Serialize;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::store::Store;

/// `GET /api/admin/me` (admin only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminIdentity {
    /// The name the audit records for this token: `admin` or `admin:<org>`.
    pub actor: String,
    /// The global admin (every org), else an org admin.
    pub global: bool,
    /// The org an org admin is confined to; `null` for the global admin.
    pub org_id: Option<String>,
}

/// Who `principal` is; 403 for an agent token.
pub fn identity(principal: &Principal) -> Result<AdminIdentity, ApiError> {
    principal.require_admin()?;
    Ok(AdminIdentity {
        actor: principal.actor(),
        global: principal.confined_org().is_none(),
        org_id: principal.confined_org().map(str::to_owned),
    })
}

/// The orgs `principal` may act on: every org the store knows (and `default`) for the global
/// admin, its own for an org admin.
pub async fn orgs(store: &dyn Store, principal: &Principal) -> Result<Vec<String>, ApiError> {
    principal.require_admin()?;
    if let Some(own) = principal.confined_org() {
        return Ok(vec![own.to_owned()]);
    }
    let mut orgs = store.orgs().await?;
    if let Err(at) = orgs.binary_search_by(|o| o.as_str().cmp(DEFAULT_ORG)) {
        orgs.insert(at, DEFAULT_ORG.to_owned());
    }
    Ok(orgs)
}
