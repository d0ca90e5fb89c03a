//! The app state: the store, the event streams, the token cache and the notifier, opened from
//! the [`ServerConfig`] and shared by the HTTP handlers.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::auth::{FailedAuth, TokenCache, check_admin_token};
use crate::config::{Database, ServerConfig};
use crate::fleet::agents::bootstrap_admin;
use crate::fleet::checks::{NeverBlock, own_addresses};
use crate::fleet::notify::Notifier;
use crate::fleet::policies::SignedOrgs;
use crate::fleet::quotas::Quotas;
use crate::fleet::replicas;
use crate::fleet::reports::ReportContext;
use crate::fleet::{EventHub, Publisher};
use crate::metrics::ServerMetrics;
use crate::store::Store;
use crate::store::metered::MeteredStore;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::transport::Admission;

/// The state shared by all handlers.
#[derive(Debug)]
pub struct AppState {
    /// The database.
    pub store: Arc<dyn Store>,
    /// Open event streams (the same hub as the publisher's).
    pub hub: EventHub,
    /// Pushes the store's changes to the event streams, in order.
    pub publisher: Arc<Publisher>,
    /// Tokens in memory, keyed by hash.
    pub tokens: Arc<TokenCache>,
    /// The failed-authentication budget per source address.
    pub failed_auth: FailedAuth,
    /// Alert delivery.
    pub notifier: Arc<Notifier>,
    /// See [`ServerConfig::online_window`].
    pub online_window: Duration,
    /// See [`ServerConfig::approval_ttl`].
    pub approval_ttl: Duration,
    /// The gate of new event streams ([`ServerConfig::admission`]).
    pub admission: Admission,
    /// The server's Prometheus metrics.
    pub metrics: Arc<ServerMetrics>,
    /// The agents' report quotas.
    pub quotas: Quotas,
    /// Addresses never blocked fleet-wide.
    pub never_block: NeverBlock,
    /// See [`ServerConfig::signed_orgs`].
    pub signed_orgs: SignedOrgs,
}

impl AppState {
    /// Opens the data dir and the database and sets up the admin token. Returns the state and
    /// the admin token generated on this start, if any. [`start`](crate::start) does this
    /// first; handler tests use it with `warp::test` and
    /// [`http::routes`](crate::http::routes).
    pub async fn open(config: &ServerConfig) -> anyhow::Result<(Arc<Self>, Option<String>)> {
        if let Some(token) = &config.admin_token {
            check_admin_token(token).map_err(anyhow::Error::msg)?;
        }
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir `{}`", config.data_dir.display()))?;
        let metrics = Arc::new(ServerMetrics::new());
        let backend: Arc<dyn Store> = match &config.database {
            Database::Sqlite => Arc::new(
                SqliteStore::open(&config.data_dir.join("policy.db"))
                    .await
                    .context("cannot open the database")?,
            ),
            Database::Postgres(url) => Arc::new(
                PgStore::open(url)
                    .await
                    .context("cannot open the database")?,
            ),
        };
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(backend, metrics.clone()));
        let generated_admin_token = bootstrap_admin(&*store, config.admin_token.as_deref())
            .await
            .context("cannot set up the admin token")?;
        let tokens = TokenCache::new(store.tokens().await.context("cannot load tokens")?);
        let tokens = Arc::new(match config.database {
            Database::Sqlite => tokens,
            Database::Postgres(_) => tokens.shared(),
        });
        let hub = EventHub::new(config.stream_queue, config.keep_alive);
        let publisher = Arc::new(Publisher::new(hub.clone(), metrics.clone()));
        replicas::follow(&store, &publisher, &tokens, config.resync);
        let notifier = Notifier::new(config.notify.clone(), store.clone(), metrics.clone())
            .context("cannot build the notification HTTP client")?;
        let state = Arc::new(AppState {
            publisher,
            hub,
            tokens,
            failed_auth: FailedAuth::new(config.auth_failures_per_minute),
            notifier: Arc::new(notifier),
            online_window: config.online_window,
            approval_ttl: config.approval_ttl,
            admission: Admission::new(config.admission),
            quotas: Quotas::new(config.quotas),
            never_block: NeverBlock {
                own: own_addresses(config.listen.ip()),
                ranges: config.never_block.clone(),
            },
            signed_orgs: config.signed_orgs.clone(),
            store,
            metrics,
        });
        Ok((state, generated_admin_token))
    }

    /// What handling a report needs.
    pub fn reports(&self) -> ReportContext<'_> {
        ReportContext {
            store: &*self.store,
            publisher: &self.publisher,
            notifier: &self.notifier,
            approval_ttl: self.approval_ttl,
            quotas: &self.quotas,
            never_block: &self.never_block,
        }
    }
}

/// Evaluates the gates of running rollouts every `every` (besides heartbeats, reads and
/// operations), until the app state is gone or its store closed.
pub fn spawn_gate_timer(state: std::sync::Weak<AppState>, every: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every.max(Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(state) = state.upgrade() else { break };
            match crate::fleet::rollouts::check_all_gates(&*state.store, &state.publisher).await {
                Ok(()) => {}
                Err(crate::store::StoreError::Closed) => break,
                Err(error) => tracing::warn!(%error, "cannot evaluate the rollout gates"),
            }
        }
    });
}
