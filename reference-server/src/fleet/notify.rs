//! Alert notifications: the `--notify-config` file (JSON or TOML) naming the channels, the
//! check of policies against it, and delivery with retry and backoff to webhooks (HTTP POST,
//! JSON body), email (SMTP through lettre) and Telegram (`sendMessage`).
//!
//! Deliveries are durable: an alert report's deliveries are queued in the store in the
//! transaction that acknowledges the report ([`Notifier::plan`], `Store::insert_alert`), and a
//! background worker ([`Notifier::spawn_worker`]) delivers what is queued and removes each with
//! its outcome's audit entry. A client that disconnects, or a server that stops or crashes,
//! between the two loses nothing: the worker delivers what is queued when the server starts.
//! Delivery is at least once (a crash after a delivery but before its removal repeats it).
//! Replicas sharing a PostgreSQL database share the queue: each delivery is claimed by one of
//! them (see `Store::pending_deliveries`).
//!
//! Secrets (passwords, bot tokens, webhook URLs, which often carry a key) never reach a log
//! line or a response: they live in [`Secret`], whose `Debug` prints `***`, errors are logged
//! without their URL, and only channel names are ever shown.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use policy_engine::policy::RuleKind;
use policy_engine::{Policy, ValidationError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};

use crate::clock;
use crate::metrics::ServerMetrics;
use crate::store::{NewDelivery, NewEntry, PendingDelivery, Store, StoreError};

/// Deliveries under way at once; more wait in the queue.
pub const MAX_DELIVERIES_IN_FLIGHT: usize = 64;

/// How often an idle delivery worker looks at the queue without being woken.
const RECHECK: Duration = Duration::from_secs(30);

/// A configuration value that must not be shown.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value, for use (never for display).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The notification config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NotifyConfig {
    /// Channels by the name policies use in `notifyChannels`.
    pub channels: BTreeMap<String, Channel>,
    /// Retry settings shared by every channel.
    #[serde(default)]
    pub retry: Retry,
}

/// One channel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Channel {
    /// HTTP POST of a JSON body.
    Webhook {
        /// Where to POST.
        url: Secret,
    },
    /// SMTP.
    Email {
        /// SMTP server.
        host: String,
        /// Port (default 25 for `none`, 587 for `starttls`, 465 for `tls`).
        port: Option<u16>,
        /// `none` (plain SMTP, for a local relay), `starttls` or `tls`; default `starttls`.
        #[serde(default)]
        tls: SmtpTls,
        /// Sender address.
        from: String,
        /// Recipients.
        to: Vec<String>,
        /// SMTP user.
        username: Option<String>,
        /// SMTP password.
        password: Option<Secret>,
    },
    /// Telegram Bot API `sendMessage`.
    Telegram {
        /// The bot token.
        #[serde(rename = "botToken")]
        bot_token: Secret,
        /// The chat to post to.
        #[serde(rename = "chatId")]
        chat_id: String,
        /// API base URL (default `https://api.telegram.org`; tests point it at a local server).
        #[serde(rename = "baseUrl")]
        base_url: Option<String>,
    },
}

/// How SMTP is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain SMTP (a local relay or a test sink).
    None,
    /// STARTTLS after connecting.
    #[default]
    Starttls,
    /// TLS from the first byte.
    Tls,
}

/// Retry with exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retry {
    /// Tries in all, at least 1.
    pub attempts: u32,
    /// Wait after the first failure; doubled after each further one.
    pub initial_backoff_ms: u64,
    /// Longest wait.
    pub max_backoff_ms: u64,
    /// Time limit of one try.
    pub timeout_ms: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 5,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            timeout_ms: 10_000,
        }
    }
}

impl Retry {
    /// The wait after failed try number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(20);
        Duration::from_millis(
            self.initial_backoff_ms
                .saturating_mul(factor)
                .min(self.max_backoff_ms),
        )
    }
}

/// Why the config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum NotifyConfigError {
    /// Unreadable.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid JSON / TOML for the config.
    #[error("invalid notification config `{path}`: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (never a secret's value: serde reports field names and types).
        message: String,
    },
    /// Semantically wrong.
    #[error("invalid notification config `{path}`: channel `{channel}`: {message}")]
    Channel {
        /// The file.
        path: String,
        /// The channel.
        channel: String,
        /// What is wrong.
        message: String,
    },
}

impl NotifyConfig {
    /// Reads a config file: TOML when it ends in `.toml`, JSON otherwise.
    pub fn load(path: &Path) -> Result<Self, NotifyConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| NotifyConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let toml = path.extension().is_some_and(|e| e == "toml");
        let config: Self = if toml {
            toml::from_str(&text).map_err(|e| NotifyConfigError::Parse {
                path: shown.clone(),
                message: e.message().to_owned(),
            })?
        } else {
            serde_json::from_str(&text).map_err(|e| NotifyConfigError::Parse {
                path: shown.clone(),
                message: e.to_string(),
            })?
        };
        config.check(&shown)?;
        Ok(config)
    }

    fn check(&self, path: &str) -> Result<(), NotifyConfigError> {
        let fail = |channel: &str, message: &str| NotifyConfigError::Channel {
            path: path.to_owned(),
            channel: channel.to_owned(),
            message: message.to_owned(),
        };
        for (name, channel) in &self.channels {
            match channel {
                Channel::Webhook { url } => {
                    let parsed = reqwest::Url::parse(url.expose())
                        .map_err(|_| fail(name, "`url` is not a valid URL"))?;
                    if !matches!(parsed.scheme(), "http" | "https") {
                        return Err(fail(name, "`url` must be http or https"));
                    }
                }
                Channel::Email { to, .. } if to.is_empty() => {
                    return Err(fail(name, "`to` needs at least one address"));
                }
                Channel::Email { from, to, .. } => {
                    for address in std::iter::once(from).chain(to) {
                        address.parse::<lettre::Address>().map_err(|_| {
                            fail(name, &format!("`{address}` is not an email address"))
                        })?;
                    }
                }
                Channel::Telegram { base_url, .. } => {
                    if let Some(base) = base_url {
                        reqwest::Url::parse(base)
                            .map_err(|_| fail(name, "`baseUrl` is not a valid URL"))?;
                    }
                }
            }
        }
        if self.retry.attempts == 0 {
            return Err(fail("retry", "`attempts` must be at least 1"));
        }
        Ok(())
    }
}

/// Checks every `notifyChannels` entry of `policy` against the configured channels. Without a
/// config file every name is accepted (with a warning), so the API page's example works on a
/// fresh server.
pub fn check_policy(config: Option<&NotifyConfig>, policy: &Policy) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    for (i, rule) in policy.rules.iter().enumerate() {
        let RuleKind::AlertThreshold(alert) = &rule.kind else {
            continue;
        };
        for (j, name) in alert.notify_channels.iter().enumerate() {
            match config {
                Some(config) if !config.channels.contains_key(name) => {
                    let known: Vec<String> =
                        config.channels.keys().map(|k| format!("`{k}`")).collect();
                    let known = if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    };
                    errors.push(ValidationError::new(
                        format!("rules[{i}].config.notifyChannels[{j}]"),
                        format!(
                            "unknown notification channel `{name}`; configured channels: {known}"
                        ),
                    ));
                }
                Some(_) => {}
                None => tracing::warn!(
                    channel = name.as_str(),
                    "policy names a notification channel but the server has no --notify-config; \
                     alerts on it will not be delivered"
                ),
            }
        }
    }
    errors
}

/// An alert to deliver (queued in the store as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Org.
    pub org_id: String,
    /// Reporting agent.
    pub agent_id: String,
    /// Its hostname.
    pub hostname: String,
    /// The reported action record as JSON.
    pub record: Value,
    /// Channels named by the action.
    pub channels: Vec<String>,
    /// Received at.
    pub received_at: String,
}

impl Alert {
    /// One line for email subjects and chat messages.
    pub fn text(&self) -> String {
        let field = |k: &str| {
            self.record
                .get(k)
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .unwrap_or_else(|| "?".to_owned())
        };
        format!(
            "policy alert: severity {} threshold exceeded ({} events in the last hour) on {} ({}), org {}, rule {}, policy {}",
            field("severity"),
            field("count"),
            self.hostname,
            self.agent_id,
            self.org_id,
            field("rule"),
            field("policyVersion"),
        )
    }

    fn webhook_body(&self, channel: &str) -> Value {
        json!({
            "type": "alert",
            "channel": channel,
            "orgId": self.org_id,
            "agentId": self.agent_id,
            "hostname": self.hostname,
            "receivedAt": self.received_at,
            "text": self.text(),
            "alert": self.record,
        })
    }
}

/// Delivers alerts to the configured channels and records each delivery in the audit.
#[derive(Debug)]
pub struct Notifier {
    config: Option<NotifyConfig>,
    http: reqwest::Client,
    store: Arc<dyn Store>,
    metrics: Arc<ServerMetrics>,
    /// Wakes the worker when deliveries were queued or one finished.
    queued: Arc<Notify>,
}

impl Notifier {
    /// A notifier for `config` (`None`: nothing is delivered, every alert is recorded as
    /// `not_configured`), recording deliveries in `store` and counting them in `metrics`.
    pub fn new(
        config: Option<NotifyConfig>,
        store: Arc<dyn Store>,
        metrics: Arc<ServerMetrics>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            config,
            http,
            store,
            metrics,
            queued: Arc::new(Notify::new()),
        })
    }

    /// The channels configured, if any.
    pub fn config(&self) -> Option<&NotifyConfig> {
        self.config.as_ref()
    }

    /// What to store with `alert`'s report: one delivery per configured channel, and one audit
    /// entry (`unknown_channel` or `not_configured`) per channel that cannot be delivered.
    pub fn plan(&self, alert: &Alert) -> (Vec<NewDelivery>, Vec<NewEntry>) {
        let mut deliveries = Vec::new();
        let mut skipped = Vec::new();
        let record = serde_json::to_value(alert).unwrap_or(Value::Null);
        for name in &alert.channels {
            let configured = self
                .config
                .as_ref()
                .is_some_and(|c| c.channels.contains_key(name));
            if configured {
                deliveries.push(NewDelivery {
                    org_id: alert.org_id.clone(),
                    channel: name.clone(),
                    alert: record.clone(),
                });
                continue;
            }
            let outcome = if self.config.is_some() {
                "unknown_channel"
            } else {
                "not_configured"
            };
            tracing::warn!(channel = name.as_str(), outcome, "alert not delivered");
            // Only configured names become label values: policies may name anything.
            self.metrics.notification("", outcome);
            skipped.push(delivery_entry(alert, name, outcome, None, 0));
        }
        (deliveries, skipped)
    }

    /// Tells the worker that deliveries were queued (call after they are stored).
    pub fn wake(&self) {
        self.queued.notify_one();
    }

    /// Starts the delivery worker: it delivers what is queued (what a previous run left first),
    /// at most [`MAX_DELIVERIES_IN_FLIGHT`] at a time, until the store closes or the notifier
    /// is gone.
    pub fn spawn_worker(self: &Arc<Self>) {
        let notifier = Arc::downgrade(self);
        let queued = self.queued.clone();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(MAX_DELIVERIES_IN_FLIGHT));
            let mut after_id = 0;
            loop {
                let Some(batch) = next_batch(&notifier, after_id).await else {
                    break;
                };
                if batch.is_empty() {
                    // Woken when this server queues a delivery; the periodic look also picks
                    // up what another replica sharing the database left (it stopped before
                    // delivering, or died while delivering and its claim lapsed).
                    let _ = tokio::time::timeout(RECHECK, queued.notified()).await;
                    continue;
                }
                for delivery in batch {
                    after_id = delivery.id;
                    let Ok(slot) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    let Some(notifier) = notifier.upgrade() else {
                        return;
                    };
                    tokio::spawn(async move {
                        notifier.deliver_queued(delivery).await;
                        drop(slot);
                    });
                }
            }
        });
    }

    /// Delivers one queued delivery with its retries, then removes it with its audit entry
    /// (when the store is closed meanwhile it stays queued for the next start).
    async fn deliver_queued(&self, delivery: PendingDelivery) {
        let alert: Alert = match serde_json::from_value(delivery.alert) {
            Ok(alert) => alert,
            Err(error) => {
                tracing::error!(id = delivery.id, %error, "a queued alert does not read; dropped");
                self.metrics.notification("", "corrupt");
                let entry = NewEntry {
                    org_id: String::new(),
                    agent_id: None,
                    actor: "server".to_owned(),
                    rule: None,
                    policy_version: None,
                    action: "notify".to_owned(),
                    ip: None,
                    outcome: "corrupt".to_owned(),
                    detail: Some(json!({"channel": delivery.channel, "error": error.to_string()})),
                    receipt: None,
                };
                self.finish(delivery.id, entry).await;
                return;
            }
        };
        let name = delivery.channel;
        let channel = self
            .config
            .as_ref()
            .and_then(|c| c.channels.get(&name).cloned());
        let (outcome, error, attempts) = match channel {
            Some(channel) => {
                let retry = self.config.as_ref().map(|c| c.retry).unwrap_or_default();
                let delivered = self
                    .deliver_with_retry(&channel, &name, &alert, retry)
                    .await;
                self.metrics.notification(&name, delivered.0);
                delivered
            }
            // Queued under a config that had it; the server restarted without it.
            None => {
                tracing::warn!(channel = name.as_str(), "alert not delivered: channel gone");
                self.metrics.notification("", "unknown_channel");
                ("unknown_channel", None, 0)
            }
        };
        let entry = delivery_entry(&alert, &name, outcome, error, attempts);
        self.finish(delivery.id, entry).await;
    }

    async fn finish(&self, id: i64, entry: NewEntry) {
        match self.store.finish_delivery(id, entry, clock::now()).await {
            Ok(()) => {}
            Err(StoreError::Closed) => {
                tracing::info!(id, "server stopping: alert delivery stays queued");
            }
            Err(error) => tracing::error!(id, %error, "cannot record the alert delivery"),
        }
    }

    async fn deliver_with_retry(
        &self,
        channel: &Channel,
        name: &str,
        alert: &Alert,
        retry: Retry,
    ) -> (&'static str, Option<String>, u32) {
        let mut last_error = String::new();
        for attempt in 1..=retry.attempts.max(1) {
            let timeout = Duration::from_millis(retry.timeout_ms);
            let result =
                match tokio::time::timeout(timeout, self.deliver(channel, name, alert)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("timed out after {} ms", retry.timeout_ms)),
                };
            match result {
                Ok(()) => {
                    tracing::info!(channel = name, attempt, "alert delivered");
                    return ("delivered", None, attempt);
                }
                Err(error) => {
                    tracing::warn!(
                        channel = name,
                        attempt,
                        error = error.as_str(),
                        "alert delivery failed"
                    );
                    last_error = error;
                }
            }
            if attempt < retry.attempts {
                tokio::time::sleep(retry.backoff(attempt)).await;
            }
        }
        ("failed", Some(last_error), retry.attempts)
    }

    /// One try. Error texts never carry a URL or a secret.
    async fn deliver(&self, channel: &Channel, name: &str, alert: &Alert) -> Result<(), String> {
        match channel {
            Channel::Webhook { url } => {
                let response = self
                    .http
                    .post(url.expose())
                    .json(&alert.webhook_body(name))
                    .send()
                    .await
                    .map_err(|e| e.without_url().to_string())?;
                check_status(response.status())
            }
            Channel::Telegram {
                bot_token,
                chat_id,
                base_url,
            } => {
                let base = base_url.as_deref().unwrap_or("https://api.telegram.org");
                let url = format!(
                    "{}/bot{}/sendMessage",
                    base.trim_end_matches('/'),
                    bot_token.expose()
                );
                let response = self
                    .http
                    .post(url)
                    .json(&json!({"chat_id": chat_id, "text": alert.text()}))
                    .send()
                    .await
                    .map_err(|e| e.without_url().to_string())?;
                check_status(response.status())
            }
            Channel::Email {
                host,
                port,
                tls,
                from,
                to,
                username,
                password,
            } => {
                send_email(
                    host,
                    *port,
                    *tls,
                    from,
                    to,
                    username.as_deref(),
                    password.as_ref(),
                    alert,
                )
                .await
            }
        }
    }
}

impl Drop for Notifier {
    /// Lets the worker see that the notifier is gone, so it ends.
    fn drop(&mut self) {
        self.queued.notify_one();
    }
}

/// The next queued deliveries after `after_id`; `None` once the notifier is gone or the store
/// closed. A store error is logged and read as an empty batch (the next wake tries again).
async fn next_batch(notifier: &Weak<Notifier>, after_id: i64) -> Option<Vec<PendingDelivery>> {
    let notifier = notifier.upgrade()?;
    let limit = u32::try_from(MAX_DELIVERIES_IN_FLIGHT).unwrap_or(u32::MAX);
    match notifier.store.pending_deliveries(after_id, limit).await {
        Ok(batch) => Some(batch),
        Err(StoreError::Closed) => None,
        Err(error) => {
            tracing::error!(%error, "cannot read queued alert deliveries");
            Some(Vec::new())
        }
    }
}

fn check_status(status: reqwest::StatusCode) -> Result<(), String> {
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

#[allow(clippy::too_many_arguments)]
async fn send_email(
    host: &str,
    port: Option<u16>,
    tls: SmtpTls,
    from: &str,
    to: &[String],
    username: Option<&str>,
    password: Option<&Secret>,
    alert: &Alert,
) -> Result<(), String> {
    use lettre::message::header::ContentType;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let mut message = Message::builder()
        .from(from.parse().map_err(|e| format!("bad sender: {e}"))?)
        .subject(alert.text())
        .header(ContentType::TEXT_PLAIN);
    for recipient in to {
        message = message.to(recipient
            .parse()
            .map_err(|e| format!("bad recipient: {e}"))?);
    }
    let body = format!(
        "{}\n\n{}\n",
        alert.text(),
        serde_json::to_string_pretty(&alert.record).unwrap_or_default()
    );
    let message = message.body(body).map_err(|e| e.to_string())?;
    let builder = match tls {
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        SmtpTls::Starttls => {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host).map_err(|e| e.to_string())?
        }
        SmtpTls::Tls => {
            AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(|e| e.to_string())?
        }
    };
    let mut builder = builder.port(port.unwrap_or(match tls {
        SmtpTls::None => 25,
        SmtpTls::Starttls => 587,
        SmtpTls::Tls => 465,
    }));
    if let (Some(user), Some(password)) = (username, password) {
        builder = builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
            user.to_owned(),
            password.expose().to_owned(),
        ));
    }
    builder
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn delivery_entry(
    alert: &Alert,
    channel: &str,
    outcome: &str,
    error: Option<String>,
    attempts: u32,
) -> NewEntry {
    NewEntry {
        org_id: alert.org_id.clone(),
        agent_id: Some(alert.agent_id.clone()),
        actor: "server".to_owned(),
        rule: alert.record.get("rule").and_then(Value::as_u64),
        policy_version: alert
            .record
            .get("policyVersion")
            .and_then(Value::as_str)
            .and_then(|v| v.parse().ok()),
        action: "notify".to_owned(),
        ip: None,
        outcome: outcome.to_owned(),
        detail: Some(json!({"channel": channel, "attempts": attempts, "error": error})),
        receipt: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let config: NotifyConfig = serde_json::from_str(
            r#"{"channels":{"tg":{"type":"telegram","botToken":"123:SECRET","chatId":"42"},
                "mail":{"type":"email","host":"h","from":"a@b.c","to":["d@e.f"],
                        "username":"u","password":"PASSWORD"}}}"#,
        )
        .unwrap_or_else(|e| panic_free(e.to_string()));
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("SECRET") && !shown.contains("PASSWORD"),
            "{shown}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let retry = Retry {
            attempts: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 350,
            timeout_ms: 1,
        };
        let waits: Vec<u128> = (1..=4).map(|n| retry.backoff(n).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 350, 350]);
    }

    #[test]
    fn toml_and_json_files_load_and_bad_ones_say_where() {
        let dir = std::env::temp_dir().join(format!("notify-config-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let toml_path = dir.join("notify.toml");
        let written = std::fs::write(
            &toml_path,
            "[channels.ops]\ntype = \"webhook\"\nurl = \"https://hooks.example.test/x\"\n\n\
             [channels.telegram]\ntype = \"telegram\"\nbotToken = \"1:SECRET\"\nchatId = \"7\"\n\n\
             [retry]\nattempts = 2\ninitialBackoffMs = 10\nmaxBackoffMs = 20\ntimeoutMs = 1000\n",
        );
        assert!(written.is_ok());
        let loaded = NotifyConfig::load(&toml_path).map_err(|e| e.to_string());
        let names: Vec<String> = loaded
            .as_ref()
            .map(|c| c.channels.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(
            names,
            vec!["ops".to_owned(), "telegram".to_owned()],
            "{loaded:?}"
        );

        let json_path = dir.join("notify.json");
        let cases = [
            (
                r#"{"channels":{"ops":{"type":"webhook","url":"ftp://x"}}}"#,
                "channel `ops`: `url` must be http or https",
            ),
            (
                r#"{"channels":{"m":{"type":"email","host":"h","from":"nope","to":["a@b.c"]}}}"#,
                "channel `m`: `nope` is not an email address",
            ),
            (
                r#"{"channels":{"p":{"type":"pager"}}}"#,
                "unknown variant `pager`, expected one of `webhook`, `email`, `telegram` at line 1 column 32",
            ),
        ];
        for (text, message) in cases {
            assert!(std::fs::write(&json_path, text).is_ok());
            let error = NotifyConfig::load(&json_path).err().map(|e| e.to_string());
            assert_eq!(
                error,
                Some(format!(
                    "invalid notification config `{}`: {message}",
                    json_path.display()
                ))
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn panic_free(message: String) -> NotifyConfig {
        assert!(message.is_empty(), "{message}");
        NotifyConfig {
            channels: BTreeMap::new(),
            retry: Retry::default(),
        }
    }
}
