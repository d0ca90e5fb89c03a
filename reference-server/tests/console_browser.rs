//! The console in a real browser: headless Chromium from the distribution's packages
//! (`chromium`, `chromium-driver`), driven over WebDriver with fantoccini, against the server
//! binary over TLS on a fresh data dir (this build's, or the one `$CONSOLE_SERVER_BIN` names:
//! `.ci/test` runs it again against the release binary), signed in with the token it prints. An agent is played
//! over HTTP by the test (enrollment, event stream, heartbeats, reports) and the console must
//! follow it live: an agent comes online, an invalid policy shows its errors at their paths
//! and a valid one is published, a version signed by an operator key shows its key id, two
//! versions are compared, an approval request appears
//! without a reload and is approved with a reason (the audit shows it), another is denied from
//! the keyboard, a block is lifted, the audit is filtered and paged (a bad filter shows the
//! server's error), an org admin sees only its org, a hostname carrying markup is shown as
//! text, and a stopped server turns into an offline status and error states. Screenshots of every page go to `$CONSOLE_SCREENSHOTS` (default:
//! the target's temp dir) and are checked to be real, laptop-sized pictures.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::key::Key;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use policy_engine::protocol::RolloutTerms;
use policy_engine::signing::SigningKey;
use policy_engine::{Policy, PolicyVersion};
use reqwest_eventsource::{Event, EventSource};
use serde_json::{Value, json};
use warp::http::Method;

const SERVER: &str = env!("CARGO_BIN_EXE_reference-server");

/// The server binary to test: `$CONSOLE_SERVER_BIN` (e.g. `target/release/reference-server`),
/// else the one cargo built with this test.
fn server_bin() -> PathBuf {
    std::env::var_os("CONSOLE_SERVER_BIN").map_or_else(|| PathBuf::from(SERVER), PathBuf::from)
}
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const DEADLINE: Duration = Duration::from_secs(10);
const WIDTH: u32 = 1366;
const HEIGHT: u32 = 900;

/// A hostname an attacker controls (it is whatever the enrolling side says).
const EVIL_HOST: &str = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>db-2";

/// The server binary on a loopback port with a fresh data dir; killed on drop.
struct Server {
    child: Child,
    base: String,
    token: String,
    /// Removed with the server.
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Server {
    fn start() -> Self {
        let dir = temp("policy-console-server");
        let bin = server_bin();
        assert!(bin.is_file(), "no server binary at {}", bin.display());
        let mut child = Command::new(&bin)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env_remove("POLICY_ADMIN_TOKEN")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = || lines.recv_timeout(Duration::from_secs(20)).unwrap();
        let token = line()
            .strip_prefix("admin token (shown once, keep it): ")
            .unwrap()
            .to_owned();
        let base = line().strip_prefix("listening on ").unwrap().to_owned();
        let pem = std::fs::read(dir.path().join("tls/cert.pem")).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Self {
            child,
            base,
            token,
            _dir: dir,
            http,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let value: Value = response.json().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {value}");
        value["data"].clone()
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.call(method, path, &self.token, body).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver on a free loopback port, in its own process group so that the Chromium it
/// starts goes with it on drop.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
    profile: PathBuf,
}

impl Driver {
    async fn start() -> Self {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install the Debian package `{package}` (.ci/test does)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let profile_dir = temp("policy-console-chromium");
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profile: profile_dir.path().to_path_buf(),
            _profile: profile_dir,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = client
                .get(format!("{}/status", driver.url))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success());
            if let Some(response) = ready {
                let status: Value = response.json().await.unwrap();
                if status["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    async fn browser(&self) -> Client {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            &format!("--window-size={WIDTH},{HEIGHT}"),
            &format!("--user-data-dir={}", self.profile.display()),
        ];
        let capabilities = json!({
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn temp(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{prefix}-{}-", std::process::id()))
        .tempdir()
        .unwrap()
}

/// chromedriver's log of the page's console (messages, exceptions, CSP violations).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _url: &url::Url) -> (Method, Option<String>) {
        (Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

/// The test's view of the page.
struct Page {
    c: Client,
    shots: PathBuf,
}

impl Page {
    async fn find(&self, css: &str) -> Element {
        self.c
            .wait()
            .at_most(DEADLINE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` within {DEADLINE:?}: {e}"))
    }

    /// Waits until the first element matching `css` has a text containing `part`.
    async fn text(&self, css: &str, part: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        let mut last = String::new();
        loop {
            if let Ok(element) = self.c.find(Locator::Css(css)).await {
                if let Ok(text) = element.text().await {
                    if text.contains(part) {
                        return text;
                    }
                    last = text;
                }
            }
            assert!(
                Instant::now() < deadline,
                "`{css}` never contained `{part}`; last text: `{last}`"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `css` matches exactly `n` elements.
    async fn count(&self, css: &str, n: usize) -> Vec<Element> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let found = self.c.find_all(Locator::Css(css)).await.unwrap();
            if found.len() == n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "`{css}` matched {} elements, expected {n}",
                found.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn js(&self, script: &str) -> Value {
        self.c.execute(script, vec![]).await.unwrap()
    }

    /// Runs `op` on the element matching `css`. The console re-renders a page when a live
    /// update arrives, so the element found can be replaced before `op` reaches it; WebDriver
    /// then answers "stale element reference" and nothing happened, so `op` is retried on the
    /// element now on the page, as a person's click would hit it.
    async fn on<T>(
        &self,
        css: &str,
        op: impl Fn(Element) -> BoxFuture<'static, Result<T, CmdError>>,
    ) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match op(self.find(css).await).await {
                Ok(value) => return value,
                Err(e) if e.is_stale_element_reference() => {
                    assert!(
                        Instant::now() < deadline,
                        "`{css}` was replaced before every try until the deadline"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("`{css}`: {e}"),
            }
        }
    }

    async fn click(&self, css: &str) {
        self.on(css, |e| Box::pin(async move { e.click().await }))
            .await;
    }

    async fn select(&self, css: &str, value: &'static str) {
        self.on(css, move |e| {
            Box::pin(async move { e.select_by_value(value).await })
        })
        .await;
    }

    async fn enabled(&self, css: &str) -> bool {
        self.on(css, |e| Box::pin(async move { e.is_enabled().await }))
            .await
    }

    /// The text of the element matching `css` now.
    async fn text_now(&self, css: &str) -> String {
        self.on(css, |e| Box::pin(async move { e.text().await }))
            .await
    }

    /// The texts of every element matching `css`, read at one moment.
    async fn texts(&self, css: &str) -> Vec<String> {
        let script = format!(
            "return Array.from(document.querySelectorAll({}), (e) => e.innerText)",
            Value::from(css)
        );
        serde_json::from_value(self.js(&script).await).unwrap()
    }

    async fn go(&self, nav: &str, heading: &str) {
        self.click(&format!("#nav-{nav}")).await;
        self.text("main h1", heading).await;
    }

    /// Saves a screenshot and checks it is a PNG of the window's width with content.
    async fn shot(&self, name: &str) {
        let png = self.c.screenshot().await.unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}: not a PNG");
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!(width, WIDTH, "{name}");
        assert!(height >= 600, "{name}: {height} px high");
        // A blank or near-empty page compresses to a few kilobytes.
        assert!(png.len() > 20_000, "{name}: only {} bytes", png.len());
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// What the page's console logged since the last call that an operator should never see:
    /// errors, CSP violations, Trusted Types refusals. (A 404 of an org without a policy yet
    /// is an answer the pages expect; the browser logs it as a failed load.)
    async fn console_problems(&self) -> Vec<Value> {
        let log = self.c.issue_cmd(BrowserLog).await.unwrap();
        log.as_array()
            .unwrap()
            .iter()
            .filter(|entry| {
                let message = entry["message"].as_str().unwrap_or_default();
                !message.contains("Failed to load resource")
                    && (entry["level"] == "SEVERE"
                        || message.contains("Content Security Policy")
                        || message.contains("Trusted"))
            })
            .cloned()
            .collect()
    }

    /// Presses and releases `key` where the focus is, as a keyboard does.
    async fn press(&self, key: Key) {
        let keys = KeyActions::new("keyboard".to_owned())
            .then(KeyAction::Down { value: key.into() })
            .then(KeyAction::Up { value: key.into() });
        self.c.perform_actions(keys).await.unwrap();
    }

    async fn set_text(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }
}

/// The agent the test plays: an enrolled id and token.
struct Agent {
    id: String,
    token: String,
}

async fn enroll(server: &Server, hostname: &str) -> Agent {
    let answer = server
        .admin(
            reqwest::Method::POST,
            "/api/agents/enroll",
            Some(json!({"hostname": hostname})),
        )
        .await;
    Agent {
        id: answer["agentId"].as_str().unwrap().to_owned(),
        token: answer["token"].as_str().unwrap().to_owned(),
    }
}

async fn report(server: &Server, agent: &Agent, body: Value) -> Value {
    server
        .call(
            reqwest::Method::POST,
            &format!("/api/agents/{}/reports", agent.id),
            &agent.token,
            Some(body),
        )
        .await
}

const INVALID: &str = r#"{
  "name": "SSH",
  "rules": [
    {"type": "block_ip", "config": {"trigger": "brute_force", "treshold": 5, "duration": "24h", "scope": "host"}},
    {"type": "alert_threshold", "config": {"severity": "urgent", "countPerHour": 5, "notifyChannels": ["ops"]}}
  ]
}"#;

fn policy(threshold: u32) -> String {
    format!(
        r#"{{
  "name": "SSH",
  "rules": [
    {{"type": "block_ip", "config": {{"trigger": "brute_force", "threshold": {threshold}, "duration": "24h", "scope": "fleet"}}}},
    {{"type": "auto_respond", "config": {{"trigger": "malware", "action": "kill_process", "minConfidence": 0.9, "requireApproval": true}}}},
    {{"type": "auto_respond", "config": {{"trigger": "cryptominer", "action": "kill_process", "minConfidence": 0.99, "requireApproval": false}}}}
  ]
}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_work_the_fleet_from_the_console() {
    let shots = std::env::var_os("CONSOLE_SCREENSHOTS").map_or_else(
        || Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&shots).unwrap();
    let server = Server::start();
    let driver = Driver::start().await;
    let page = Page {
        c: driver.browser().await,
        shots,
    };
    let web = enroll(&server, "web-1").await;
    let evil = enroll(&server, EVIL_HOST).await;
    server
        .call(
            reqwest::Method::POST,
            &format!("/api/agents/{}/heartbeat", evil.id),
            &evil.token,
            Some(json!({"lastError": "<b>nft</b> failed: <script>window.pwned=3</script>"})),
        )
        .await;

    sign_in(&page, &server).await;
    fleet(&page, &server, &web).await;
    let key = SigningKey::generate().unwrap();
    editor(&page, &server, &key).await;
    policies(&page, &key).await;
    let mut stream = agent_stream(&server, &web).await;
    approvals(&page, &server, &web, &mut stream).await;
    blocks(&page, &server, &web).await;
    audit(&page, &server, &web).await;
    fleet_with_versions(&page, &server, &web, &evil).await;
    rollout(&page, &server, &web).await;
    org_admin(&page, &server).await;
    server_gone(&page, server).await;

    assert_eq!(
        page.console_problems().await,
        Vec::<Value>::new(),
        "browser console"
    );
    page.c.close().await.unwrap();
}

async fn sign_in(page: &Page, server: &Server) {
    page.c.set_window_size(WIDTH, HEIGHT).await.unwrap();
    page.c.goto(&server.base).await.unwrap();
    assert_eq!(
        page.c.current_url().await.unwrap().path(),
        "/console/",
        "`/` leads to the console"
    );
    let token = page.find("#token").await;
    // A wrong token is refused with a message, and nothing is kept.
    token.send_keys("adm_wrong").await.unwrap();
    token
        .send_keys(&char::from(Key::Enter).to_string())
        .await
        .unwrap();
    page.text("#signin-error", "does not know this token").await;
    assert_eq!(
        page.js("return sessionStorage.length").await,
        json!(0),
        "a refused token is not stored"
    );
    page.shot("sign-in").await;
    page.set_text("#token", &server.token).await;
    page.find("#token")
        .await
        .send_keys(&char::from(Key::Enter).to_string())
        .await
        .unwrap();
    page.text("main h1", "Fleet").await;
    page.text("#live-status", "live").await;
    // The token is in this tab's sessionStorage, never in the address or a cookie.
    let state = page
        .js("return [location.href, document.cookie, sessionStorage.getItem('policy-console.token')]")
        .await;
    assert!(!state[0].as_str().unwrap().contains(&server.token));
    assert_eq!(state[1], "");
    assert_eq!(state[2], server.token.as_str());
    // Trusted Types with no policy: no script can hand HTML to a sink (and the browser says
    // so in its console, which is otherwise clean).
    assert_eq!(
        page.console_problems().await,
        Vec::<Value>::new(),
        "browser console"
    );
    let sink = page
        .js("try { document.createElement('div').innerHTML = '<b>x</b>'; return 'allowed'; } catch (e) { return e.name; }")
        .await;
    assert_eq!(sink, "TypeError");
    let problems = page.console_problems().await;
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0]["message"]
            .as_str()
            .unwrap()
            .contains("This document requires 'TrustedHTML' assignment"),
        "{problems:#?}"
    );
}

async fn fleet(page: &Page, server: &Server, web: &Agent) {
    page.count("#fleet-rows tr", 2).await;
    // Markup in a hostname or an error is shown as text; nothing of it runs or renders.
    let hosts = page.texts("#fleet-rows th.host").await;
    assert!(hosts.contains(&EVIL_HOST.to_owned()), "{hosts:?}");
    page.text("#fleet-rows td.error-text", "<b>nft</b> failed: <script>")
        .await;
    let injected = page
        .js("return [window.pwned === undefined, document.querySelectorAll('#main script, #main img, #main b').length]")
        .await;
    assert_eq!(injected, json!([true, 0]));

    // web-1 is offline until its stream opens; then the page follows without a reload.
    let row = format!("#fleet-rows tr[data-key='{}']", web.id);
    page.text(&row, "offline").await;
    page.js("window.notReloaded = true").await;
    let events = agent_stream(server, web).await;
    page.text(&row, "online").await;
    assert_eq!(page.js("return window.notReloaded").await, true);
    drop(events);

    // Search and filter; `/` focuses the search from anywhere on the page.
    page.press(Key::Tab).await;
    page.c
        .perform_actions(
            KeyActions::new("keyboard".to_owned())
                .then(KeyAction::Down { value: '/' })
                .then(KeyAction::Up { value: '/' }),
        )
        .await
        .unwrap();
    assert_eq!(
        page.js("return document.activeElement.id").await,
        "fleet-search"
    );
    page.set_text("#fleet-search", "web").await;
    page.count("#fleet-rows tr", 1).await;
    page.set_text("#fleet-search", "nothing-like-this").await;
    page.text("#fleet-none", "No agent matches").await;
    page.find("#fleet-search").await.clear().await.unwrap();
    page.select("#fleet-filter", "errors").await;
    page.count("#fleet-rows tr", 1).await;
    page.select("#fleet-filter", "all").await;
    page.count("#fleet-rows tr", 2).await;

    // A reload keeps the session (sessionStorage); then, from the keyboard, the first Tab
    // reaches the skip link and Enter on it moves the focus to the page.
    page.c.refresh().await.unwrap();
    page.count("#fleet-rows tr", 2).await;
    page.press(Key::Tab).await;
    assert_eq!(
        page.js("return document.activeElement.textContent").await,
        "Skip to content"
    );
    page.press(Key::Enter).await;
    assert_eq!(page.js("return document.activeElement.id").await, "main");
}

async fn editor(page: &Page, server: &Server, key: &SigningKey) {
    page.go("editor", "Policy editor").await;
    page.text("#editor-origin", "No policy in this org yet")
        .await;
    page.set_text("#policy-text", INVALID).await;
    let errors = page.count("#editor-errors li", 3).await;
    let mut paths = Vec::new();
    for error in &errors {
        paths.push(error.attr("data-path").await.unwrap().unwrap());
    }
    assert_eq!(
        paths,
        [
            "rules[0].config.treshold",
            "rules[0].config.threshold",
            "rules[1].config.severity"
        ]
    );
    let first = errors[0].text().await.unwrap();
    assert!(
        first.contains("unknown field `treshold`") && first.contains("line 4"),
        "{first}"
    );
    assert!(!page.enabled("#publish").await);
    // Each error is marked at its place in the text, and a click selects it.
    let marks = page.count(".backdrop mark", 2).await;
    assert_eq!(marks[1].text().await.unwrap(), "\"severity\": \"urgent\"");
    errors[0]
        .find(Locator::Css("button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let selected = page
        .js("const t = document.getElementById('policy-text'); return t.value.slice(t.selectionStart, t.selectionEnd)")
        .await;
    assert_eq!(selected, "\"treshold\": 5");
    page.shot("editor-errors").await;

    page.set_text("#policy-text", &policy(5)).await;
    page.text("#validation-ok", "Valid.").await;
    page.click("#publish").await;
    page.text("#publish-result", "Published v1").await;
    let active = server
        .admin(reqwest::Method::GET, "/api/policy/active", None)
        .await;
    assert_eq!(active["version"], "v1");
    assert_eq!(active["rules"][0]["config"]["threshold"], 5);
    // Another admin publishes v2 meanwhile, signed offline by an operator key with a fallback
    // to v1 (the policies page must show it, and who signed it).
    let v2: Value = serde_json::from_str(&policy(10)).unwrap();
    let signature = key.sign_with_rollout(
        "default",
        PolicyVersion::new(2),
        &Policy::from_value(&v2).unwrap(),
        Some(RolloutTerms {
            fallback: Some(PolicyVersion::new(1)),
        }),
    );
    let signed = json!({"orgId": "default", "version": "v2", "policy": v2, "signature": signature});
    let stored = server
        .admin(reqwest::Method::POST, "/api/policy", Some(signed))
        .await;
    assert_eq!(stored["signature"]["keyId"], key.id().to_string());
}

async fn policies(page: &Page, key: &SigningKey) {
    let key_id = key.id().to_string();
    page.go("policies", "Policies").await;
    page.count("#version-list li", 2).await;
    page.text("#version-title", "v2").await;
    page.text("#policy-json", "\"threshold\": 10").await;
    // v2 is signed: the list marks it with the key in its tooltip, the detail names the key
    // and the signed rollback terms; v1 is unsigned.
    page.count("#version-list .badge.signed", 1).await;
    assert_eq!(
        page.on("#version-list .badge.signed", |e| Box::pin(async move {
            e.attr("title").await
        }))
        .await
        .unwrap(),
        format!("Signed by operator key {key_id}")
    );
    page.text("#version-list li:first-child", "signed").await;
    page.text(
        "#signature",
        &format!(
            "signed ed25519 by operator key {key_id}; the signed terms let agents fall back from it to v1."
        ),
    )
    .await;
    assert_eq!(page.text_now("#signature .key-id").await, key_id);
    page.select("#diff-from", "v1").await;
    page.select("#diff-to", "v2").await;
    page.click("#compare").await;
    page.text("#diff-summary", "1 line added, 1 line removed")
        .await;
    page.text("#diff tr.del", "\"threshold\": 5").await;
    page.text("#diff tr.add", "\"threshold\": 10").await;
    page.shot("policies-diff").await;
    page.click("#version-list li:last-child a").await;
    page.text("#version-title", "v1").await;
    page.text(
        "#signature",
        "unsigned Agents pinned to an operator key (--policy-key) refuse this version.",
    )
    .await;
    page.click("#version-list li:first-child a").await;
    page.text("#version-title", "v2").await;
    page.text("#signature", &key_id).await;
    page.shot("policies").await;
}

async fn agent_stream(server: &Server, agent: &Agent) -> EventSource {
    let request = server
        .http
        .get(format!("{}/api/events", server.base))
        .bearer_auth(&agent.token);
    let mut source = EventSource::new(request).unwrap();
    match tokio::time::timeout(DEADLINE, source.next()).await {
        Ok(Some(Ok(Event::Open))) => source,
        other => panic!("the agent's stream did not open: {other:?}"),
    }
}

/// The next event named `name` on an agent's stream.
async fn next_event(stream: &mut EventSource, name: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(Event::Message(m)))) if m.event == name => {
                return serde_json::from_str(&m.data).unwrap();
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no `{name}` event: {other:?}"),
        }
    }
}

async fn approvals(page: &Page, server: &Server, web: &Agent, stream: &mut EventSource) {
    page.go("approvals", "Approvals").await;
    page.text("#pending", "No approval requests are waiting")
        .await;
    let requested = report(
        server,
        web,
        json!({"action": "approval_request",
               "request": {"action": "kill_process", "pid": 4242, "process": "nginx"},
               "rule": 1, "policyVersion": "v2", "eventId": "evt-77"}),
    )
    .await;
    let id = requested["approval"]["id"].as_str().unwrap().to_owned();
    // It appears without a reload, with what, where, and which rule of which version.
    let card = page.text("article.card", "Kill process 4242 (nginx)").await;
    assert!(card.contains("web-1"), "{card}");
    assert!(card.contains("PID 4242 (nginx)"), "{card}");
    assert!(card.contains("evt-77"), "{card}");
    page.text(
        "article.card .rule",
        "auto_respond: trigger malware, action kill_process",
    )
    .await;
    page.text("article.card .rule", "Rule 1 of policy v2").await;
    page.text("#pending-count", "1").await;
    page.set_text("article.card input.reason", "confirmed malware, on-call")
        .await;
    page.shot("approvals").await;
    page.click("article.card button.approve").await;
    page.text("#pending", "No approval requests are waiting")
        .await;
    page.text(
        "#status-line",
        "Approved: Kill process 4242 (nginx) on web-1",
    )
    .await;
    page.text("#history-rows", "confirmed malware, on-call")
        .await;

    let event = next_event(stream, "approval").await;
    assert_eq!(event["approvalId"], id.as_str());

    // A second request is denied, with its reason; nothing is pushed to the agent for it.
    report(
        server,
        web,
        json!({"action": "approval_request",
               "request": {"action": "kill_process", "pid": 31337, "process": "xmrig"},
               "rule": 1, "policyVersion": "v2"}),
    )
    .await;
    page.text("article.card", "Kill process 31337 (xmrig)")
        .await;
    // From the keyboard: the reason, then Tab past Approve to Deny, and Enter.
    page.set_text(
        "article.card input.reason",
        "false positive: build artefact",
    )
    .await;
    page.press(Key::Tab).await;
    assert_eq!(
        page.js("return document.activeElement.className").await,
        "primary approve"
    );
    page.press(Key::Tab).await;
    assert_eq!(
        page.js("return document.activeElement.className").await,
        "danger deny"
    );
    page.press(Key::Enter).await;
    page.text("#pending", "No approval requests are waiting")
        .await;
    page.text("#history-rows tr:first-child", "denied").await;
    page.text(
        "#history-rows tr:first-child",
        "false positive: build artefact",
    )
    .await;
    let trail = server
        .admin(
            reqwest::Method::GET,
            "/api/audit?action=approval_denied",
            None,
        )
        .await;
    assert_eq!(
        trail["entries"][0]["detail"]["reason"],
        "false positive: build artefact"
    );
    let trail = server
        .admin(
            reqwest::Method::GET,
            "/api/audit?action=approval_approved",
            None,
        )
        .await;
    let entry = &trail["entries"][0];
    assert_eq!(entry["actor"], "admin");
    assert_eq!(entry["detail"]["reason"], "confirmed malware, on-call");
}

async fn blocks(page: &Page, server: &Server, web: &Agent) {
    page.go("blocks", "Fleet blocks").await;
    page.text("main", "No fleet blocks are in force").await;
    report(
        server,
        web,
        json!({"action": "block_ip", "ip": "203.0.113.7", "duration": "24h", "scope": "fleet",
               "rule": 0, "policyVersion": "v2"}),
    )
    .await;
    page.text("#block-rows", "203.0.113.7").await;
    page.text("#block-rows", "web-1").await;
    page.shot("blocks").await;
    // Escape cancels the confirmation; the block stays.
    page.click("#block-rows button.lift").await;
    page.find("dialog.confirm").await;
    page.shot("blocks-confirm").await;
    page.c
        .active_element()
        .await
        .unwrap()
        .send_keys(&char::from(Key::Escape).to_string())
        .await
        .unwrap();
    page.count("dialog.confirm", 0).await;
    page.count("#block-rows tr", 1).await;
    page.click("#block-rows button.lift").await;
    page.click("dialog.confirm button.danger").await;
    page.text("main", "No fleet blocks are in force").await;
    page.text("#status-line", "Lifted the block on 203.0.113.7")
        .await;
    let list = server
        .admin(reqwest::Method::GET, "/api/blocks", None)
        .await;
    assert_eq!(list, json!([]));
}

async fn audit(page: &Page, server: &Server, web: &Agent) {
    page.go("audit", "Audit").await;
    page.text("#audit-rows", "approval_approved").await;
    page.shot("audit").await;
    page.set_text("#audit-action", "unblock").await;
    page.find("#audit-action")
        .await
        .send_keys(&char::from(Key::Enter).to_string())
        .await
        .unwrap();
    page.count("#audit-rows tr", 1).await;
    let row = page.text("#audit-rows tr", "203.0.113.7").await;
    assert!(
        row.contains("unblock") && row.contains("admin") && row.contains("lifted"),
        "{row}"
    );
    assert!(
        page.c
            .current_url()
            .await
            .unwrap()
            .as_str()
            .ends_with("#/audit?action=unblock")
    );

    // By address instead: the report that set the block and the unblock.
    page.find("#audit-action").await.clear().await.unwrap();
    page.set_text("#audit-ip", "203.0.113.7").await;
    page.click("#audit-apply").await;
    page.count("#audit-rows tr", 2).await;
    page.text("#audit-rows tr:first-child .action", "unblock")
        .await;
    page.text("#audit-rows tr:last-child .action", "block_ip")
        .await;
    // A filter the server refuses shows its message in an error state.
    page.set_text("#audit-ip", "not-an-ip").await;
    page.click("#audit-apply").await;
    page.text(
        ".error-state",
        "invalid query parameter `ip`: `not-an-ip` is not an IP address",
    )
    .await;

    // Paging: 30 more entries, pages of 25.
    for pid in 0..30 {
        report(
            server,
            web,
            json!({"action": "kill_process", "pid": 1000 + pid, "rule": 2, "policyVersion": "v2",
                   "outcome": "executed"}),
        )
        .await;
    }
    page.c
        .goto(&format!(
            "{}/console/#/audit?action=kill_process&limit=25",
            server.base
        ))
        .await
        .unwrap();
    page.count("#audit-rows tr", 25).await;
    page.text("#audit-rows tr:first-child", "Kill process 1029")
        .await;
    page.click("#audit-older").await;
    page.count("#audit-rows tr", 5).await;
    page.text("#audit-rows tr:last-child", "Kill process 1000")
        .await;
    assert!(!page.enabled("#audit-older").await);
    page.click("#audit-newer").await;
    page.count("#audit-rows tr", 25).await;
}

/// The fleet once agents report versions: one current, one outdated.
async fn fleet_with_versions(page: &Page, server: &Server, web: &Agent, evil: &Agent) {
    for (agent, version) in [(web, "v2"), (evil, "v1")] {
        server
            .call(
                reqwest::Method::POST,
                &format!("/api/agents/{}/heartbeat", agent.id),
                &agent.token,
                Some(json!({"policyVersion": version})),
            )
            .await;
    }
    page.go("fleet", "Fleet").await;
    page.text("#fleet-summary", "1 outdated").await;
    page.text(
        &format!("#fleet-rows tr[data-key='{}']", evil.id),
        "outdated",
    )
    .await;
    page.shot("fleet").await;
}

/// A staged rollout of v3 to `web` alone: the policies page shows it with its stages, the fleet
/// page says why `web` should run v3; the operator pauses it, then aborts it (confirmed).
async fn rollout(page: &Page, server: &Server, web: &Agent) {
    let created = server
        .admin(
            reqwest::Method::POST,
            "/api/rollouts",
            Some(json!({
                "policy": {"name": "Staged threshold", "rules": [{"type": "block_ip", "config":
                    {"trigger": "brute_force", "threshold": 20, "duration": "1h", "scope": "host"}}]},
                "stages": [{"agents": [web.id], "soakSecs": 3600}, {"percent": 100}]
            })),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["version"], "v3", "{created}");
    page.go("fleet", "Fleet").await;
    page.text(
        &format!("#fleet-rows tr[data-key='{}']", web.id),
        &format!("v3: in stage 1 of rollout `{id}`"),
    )
    .await;
    page.go("policies", "Policies").await;
    page.text("#version-title", "v3").await;
    page.text("#rollout-title", &id).await;
    page.text("#rollout-state", "running").await;
    page.text("#rollout", "from v2 · stage 1 of 2").await;
    page.text("#rollout ol.stages li.current", &web.id).await;
    page.click("#rollout-pause").await;
    page.text("#rollout-state", "paused").await;
    page.find("#rollout-resume").await;
    page.shot("policies-rollout").await;
    page.click("#rollout-abort").await;
    page.click("dialog.confirm button.danger").await;
    page.text("#rollout-state", "aborted").await;
    page.text("#rollout-reason", "aborted by").await;
    assert!(
        page.c
            .find_all(Locator::Css("#rollout .actions button"))
            .await
            .unwrap()
            .is_empty(),
        "an aborted rollout offers no operation"
    );
    let stored = server
        .admin(reqwest::Method::GET, &format!("/api/rollouts/{id}"), None)
        .await;
    assert_eq!(stored["state"], "aborted", "{stored}");
    // Back on the fleet page, where the next step starts: `web` is sent v2 again.
    page.go("fleet", "Fleet").await;
    page.text(
        &format!("#fleet-rows tr[data-key='{}']", web.id),
        &format!("v2: rollout `{id}` of v3 was aborted: back to v2"),
    )
    .await;
}

async fn org_admin(page: &Page, server: &Server) {
    // The global admin picks the org (and the pages follow); an org admin sees only its own.
    page.set_text("#org", "acme").await;
    page.press(Key::Enter).await;
    page.text("#status-line", "Now showing org acme").await;
    page.text("main", "No agents are enrolled in this org yet")
        .await;
    let created = server
        .admin(
            reqwest::Method::POST,
            "/api/tokens",
            Some(json!({"role": "admin", "org_id": "acme"})),
        )
        .await;
    page.click("#sign-out").await;
    assert_eq!(page.js("return sessionStorage.length").await, json!(0));
    page.set_text("#token", created["token"].as_str().unwrap())
        .await;
    page.click(".signin button[type=submit]").await;
    page.text("#org-label", "acme").await;
    assert!(
        page.c
            .find_all(Locator::Css("#org"))
            .await
            .unwrap()
            .is_empty()
    );
    page.c
        .goto(&format!("{}/console/#/fleet", server.base))
        .await
        .unwrap();
    page.text("main", "No agents are enrolled in this org yet")
        .await;
    page.go("policies", "Policies").await;
    page.text(
        "#policy-detail",
        "No policy has been published in this org yet",
    )
    .await;
}

/// The server stops: the console says it is offline and shows an error state, not stale data.
async fn server_gone(page: &Page, server: Server) {
    drop(server);
    page.text("#live-status", "offline, retrying").await;
    page.go("blocks", "Fleet blocks").await;
    page.text(".error-state", "Could not load this page").await;
    page.text(".error-state", "cannot reach the server").await;
    page.find(".error-state button").await;
}
