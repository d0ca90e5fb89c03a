//! A fresh PostgreSQL database per test, created in the cluster that `POLICY_TEST_POSTGRES`
//! names (`.ci/with-postgres` starts a throwaway one and sets it) and dropped afterwards.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_postgres::NoTls;

/// How to get a cluster, for the message of a test run without one.
const HOW: &str = "the PostgreSQL tests need a cluster they may create databases in: run them \
                   through `.ci/with-postgres cargo test ...` (it starts a throwaway one), or set \
                   POLICY_TEST_POSTGRES=postgres://user@host:port/postgres";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A database of its own for one test.
pub struct TestDatabase {
    /// Its URL.
    pub url: String,
    /// Its name.
    pub name: String,
    admin: String,
}

/// The cluster's URL; fails the test (it never skips) when none is configured.
pub fn cluster_url() -> String {
    match std::env::var("POLICY_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!("POLICY_TEST_POSTGRES is not set: {HOW}"),
    }
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

/// Runs `sql` on the cluster's maintenance database.
pub async fn admin_sql(sql: &str) {
    let (client, connection) = tokio_postgres::connect(&cluster_url(), NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to POLICY_TEST_POSTGRES: {e}; {HOW}"));
    let task = tokio::spawn(connection);
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("`{sql}`: {e}"));
    drop(client);
    let _ = task.await;
}

impl TestDatabase {
    /// Creates an empty database.
    pub async fn create() -> Self {
        let admin = cluster_url();
        let name = format!(
            "policy_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        admin_sql(&format!("CREATE DATABASE {name}")).await;
        Self {
            url: with_database(&admin, &name),
            name,
            admin,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop cannot await: a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok((client, connection)) = tokio_postgres::connect(&admin, NoTls).await {
                    let task = tokio::spawn(connection);
                    let _ = client.batch_execute(&sql).await;
                    drop(client);
                    let _ = task.await;
                }
            });
        })
        .join();
    }
}
