//! The OpenAPI description (`openapi.json`, served at `/api/openapi.json`) against the code:
//!
//! - the route table and the description name the same `/api` operations (the routes are read
//!   from the `warp::path!` declarations under `src/http/`);
//! - every documented exchange goes through a real server and its answer is validated against
//!   the description with a real JSON Schema validator (status, media type, body; error
//!   examples word for word); so does every answer to a request without a token and with an
//!   unknown query parameter, and every event of the agent's stream;
//! - the examples validate against their own schemas, and the policy document's schemas are the
//!   committed `policy-engine/schema/policy.schema.json`.
//!
//! An exchange is a name shared by a request body example, parameter examples and one response
//! example: the request is built from the examples of that name (path parameters fall back to
//! their `example`), and the answer must have the status of the response holding the example
//! of that name. An operation without examples is one exchange expecting its 2xx status.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::{ADMIN, DEADLINE, TestServer};
use jsonschema::Validator;
use reference_server::ServerConfig;
use reference_server::http::openapi::DOCUMENT;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

static DOC: LazyLock<Value> = LazyLock::new(|| serde_json::from_str(DOCUMENT).unwrap());

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

/// A validator for the schema at `pointer` (a JSON pointer into the description), its `$ref`s
/// resolved within the description.
fn validator(pointer: &str) -> Validator {
    let mut schema = DOC.clone();
    schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    // A URI fragment: the braces of path templates are percent-encoded.
    let fragment = pointer.replace('{', "%7B").replace('}', "%7D");
    schema["$ref"] = json!(format!("#{fragment}"));
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{pointer}: {e}"))
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn check(pointer: &str, instance: &Value) -> Result<(), String> {
    let errors: Vec<String> = validator(pointer)
        .iter_errors(instance)
        .map(|e| format!("{} at `{}`", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{pointer}: {errors:?}\ninstance: {instance}"))
    }
}

/// Every described operation: `(METHOD, path, operation)`.
fn operations() -> Vec<(String, String, &'static Value)> {
    let doc: &'static Value = &DOC;
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(operation) = item.get(*method) {
                out.push((method.to_uppercase(), path.clone(), operation));
            }
        }
    }
    out
}

/// `/api/policy/agent/{id}` -> `/api/policy/agent/{}`.
fn normalize(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

// ---------------------------------------------------------------------------------------------
// The route table

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The routes declared with `warp::path!` in `text`, as `(METHOD, /path/{}/...)`. The method
/// is the `warp::get()` (etc.) of the route's statement, or of a later statement using the
/// route's variable (`approve.or(deny)...and(warp::post())`).
fn declared_routes(text: &str) -> Vec<(String, String)> {
    let statements: Vec<&str> = text.split(';').collect();
    let method_of = |statement: &str| {
        METHODS
            .iter()
            .find(|m| statement.contains(&format!("warp::{m}()")))
            .map(|m| m.to_uppercase())
    };
    let mut routes = Vec::new();
    for (index, statement) in statements.iter().enumerate() {
        let Some(start) = statement.find("warp::path!(") else {
            continue;
        };
        let args = &statement[start + "warp::path!(".len()..];
        let args = &args[..args.find(')').unwrap()];
        let path: String = args
            .split('/')
            .map(|segment| {
                let segment = segment.trim();
                match segment.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    Some(literal) => format!("/{literal}"),
                    None => "/{}".to_owned(),
                }
            })
            .collect();
        let mut method = method_of(statement);
        let mut names: Vec<String> = statement
            .split("let ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .map(|name| vec![name.to_owned()])
            .unwrap_or_default();
        for later in &statements[index + 1..] {
            if method.is_some() {
                break;
            }
            let uses = names.iter().any(|name| {
                later
                    .split(|c: char| !c.is_alphanumeric() && c != '_')
                    .any(|word| word == name)
            });
            if uses {
                method = method_of(later);
                if let Some(name) = later
                    .split("let ")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                {
                    names.push(name.to_owned());
                }
            }
        }
        let method = method.unwrap_or_else(|| panic!("no method found for route `{path}`"));
        routes.push((method, path));
    }
    routes
}

#[test]
fn the_route_table_and_the_description_name_the_same_operations() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http"),
        &mut files,
    );
    let mut routed = BTreeSet::new();
    for file in files {
        for route in declared_routes(&std::fs::read_to_string(&file).unwrap()) {
            // Only the API is described; pages outside `/api` (a console) are not.
            if route.1.starts_with("/api/") {
                routed.insert(route);
            }
        }
    }
    let described: BTreeSet<(String, String)> = operations()
        .into_iter()
        .map(|(method, path, _)| (method, normalize(&path)))
        .collect();
    let undescribed: Vec<_> = routed.difference(&described).collect();
    let unrouted: Vec<_> = described.difference(&routed).collect();
    assert!(
        undescribed.is_empty() && unrouted.is_empty(),
        "routes the description lacks (add them to reference-server/openapi.json): {undescribed:?}\n\
         described operations no route serves: {unrouted:?}"
    );
    assert!(routed.len() >= 18, "{routed:?}");
}

#[test]
fn the_route_parser_finds_methods_on_later_statements() {
    let text = r#"
        let a = warp::path!("api" / "x" / String).and(warp::get()).then(h);
        let approve = warp::path!("api" / "y" / String / "approve").map(|id| (id, true));
        let deny = warp::path!("api" / "y" / String / "deny").map(|id| (id, false));
        let decide = approve.or(deny).unify().and(warp::post()).then(d);
    "#;
    assert_eq!(
        declared_routes(text),
        [
            ("GET".to_owned(), "/api/x/{}".to_owned()),
            ("POST".to_owned(), "/api/y/{}/approve".to_owned()),
            ("POST".to_owned(), "/api/y/{}/deny".to_owned()),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// The description on its own

#[test]
fn the_description_is_complete_and_its_examples_fit_its_schemas() {
    assert_eq!(DOC["openapi"], "3.1.0");
    let schemes = DOC["components"]["securitySchemes"].as_object().unwrap();
    let mut operation_ids = BTreeSet::new();
    let mut examples = 0;
    for (method, path, operation) in operations() {
        let at = format!("{method} {path}");
        let id = operation["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{at}: no operationId"));
        assert!(
            operation_ids.insert(id),
            "{at}: operationId `{id}` used twice"
        );
        assert!(operation["summary"].is_string(), "{at}: no summary");
        let security = operation["security"]
            .as_array()
            .unwrap_or_else(|| panic!("{at}: no security"));
        for requirement in security {
            for scheme in requirement.as_object().unwrap().keys() {
                assert!(
                    schemes.contains_key(scheme),
                    "{at}: unknown scheme `{scheme}`"
                );
            }
        }
        // Every `{param}` of the path is a declared path parameter, and back.
        let in_path: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_owned)
            .collect();
        let declared: BTreeSet<String> = parameters(operation)
            .iter()
            .filter(|p| p["in"] == "path")
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(in_path, declared, "{at}: path parameters");
        // Every answer documents 400 (unknown query parameters); 401 and 429 (failed
        // authentications from the address) when it needs a token; 408 (a body too slow) when
        // it takes a body.
        let responses = operation["responses"].as_object().unwrap();
        assert!(responses.contains_key("400"), "{at}: no 400");
        for status in ["401", "429"] {
            assert_eq!(
                responses.contains_key(status),
                !security.is_empty(),
                "{at}: {status} documented exactly when a token is needed"
            );
        }
        assert_eq!(
            responses.contains_key("408"),
            operation.get("requestBody").is_some(),
            "{at}: 408 documented exactly when a body is taken"
        );
        let pointer = format!("/paths/{}/{}", escape(&path), method.to_lowercase());
        for (status, response) in responses {
            let response = resolve(response);
            assert!(
                response["description"].is_string(),
                "{at} {status}: no description"
            );
            for (media, content) in response["content"].as_object().into_iter().flatten() {
                let schema = response_schema_pointer(&pointer, status, response, media);
                for (name, example) in content["examples"].as_object().into_iter().flatten() {
                    if media == "application/json" {
                        check(&schema, &example["value"])
                            .unwrap_or_else(|e| panic!("{at}: response example `{name}`: {e}"));
                    }
                    examples += 1;
                }
            }
        }
        if let Some(content) = operation["requestBody"]["content"]["application/json"].as_object() {
            let schema = format!("{pointer}/requestBody/content/application~1json/schema");
            for (name, example) in content["examples"].as_object().into_iter().flatten() {
                let (status, _) = expected_response(operation, name)
                    .unwrap_or_else(|| panic!("{at}: request example `{name}` has no answer"));
                if status.starts_with('2') {
                    check(&schema, &example["value"])
                        .unwrap_or_else(|e| panic!("{at}: request example `{name}`: {e}"));
                }
                examples += 1;
            }
        }
    }
    assert!(examples > 40, "{examples}");
}

/// `{"$ref": "#/components/responses/X"}` -> X.
fn resolve(value: &'static Value) -> &'static Value {
    match value["$ref"].as_str() {
        Some(reference) => DOC.pointer(reference.trim_start_matches('#')).unwrap(),
        None => value,
    }
}

fn response_schema_pointer(operation: &str, status: &str, response: &Value, media: &str) -> String {
    let own = format!("{operation}/responses/{status}");
    let base = match DOC.pointer(&format!("{own}/$ref")).and_then(Value::as_str) {
        Some(reference) => reference.trim_start_matches('#').to_owned(),
        None => own,
    };
    assert!(
        response["content"][media]["schema"].is_object(),
        "{base}: no schema"
    );
    format!("{base}/content/{}/schema", escape(media))
}

fn parameters(operation: &'static Value) -> Vec<&'static Value> {
    operation["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(resolve)
        .collect()
}

/// The status and response holding the example `name`.
fn expected_response(operation: &'static Value, name: &str) -> Option<(String, &'static Value)> {
    let mut found = Vec::new();
    for (status, response) in operation["responses"].as_object().unwrap() {
        let response = resolve(response);
        for content in response["content"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(_, c)| c)
        {
            if content["examples"].get(name).is_some() {
                found.push((status.clone(), response));
            }
        }
    }
    assert!(
        found.len() <= 1,
        "example `{name}` is documented under several statuses"
    );
    found.pop()
}

/// The names of the exchanges of an operation: its request body, parameter and response
/// examples.
fn exchanges(operation: &'static Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut add = |examples: &Value| {
        names.extend(
            examples
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.clone()),
        );
    };
    add(&operation["requestBody"]["content"]["application/json"]["examples"]);
    for parameter in parameters(operation) {
        add(&parameter["examples"]);
    }
    for (_, response) in operation["responses"].as_object().unwrap() {
        for (_, content) in resolve(response)["content"]
            .as_object()
            .into_iter()
            .flatten()
        {
            add(&content["examples"]);
        }
    }
    names
}

#[test]
fn the_policy_schemas_are_the_committed_policy_schema() {
    let committed: Value = serde_json::from_str(policy_engine::policy::JSON_SCHEMA).unwrap();
    fn rewrite(value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| match (k.as_str(), v.as_str()) {
                        ("$ref", Some(r)) => (
                            k.clone(),
                            json!(r.replace("#/$defs/", "#/components/schemas/")),
                        ),
                        _ => (k.clone(), rewrite(v)),
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(rewrite).collect()),
            other => other.clone(),
        }
    }
    let schemas = &DOC["components"]["schemas"];
    let mut document = committed.clone();
    for key in ["$schema", "$id", "$defs"] {
        document.as_object_mut().unwrap().remove(key);
    }
    assert_eq!(
        schemas["PolicyDocument"],
        rewrite(&document),
        "components.schemas.PolicyDocument differs from policy.schema.json (without `$schema`, \
         `$id`, `$defs`; `#/$defs/` refs as `#/components/schemas/`)"
    );
    for (name, definition) in committed["$defs"].as_object().unwrap() {
        assert_eq!(
            schemas[name],
            rewrite(definition),
            "components.schemas.{name}"
        );
    }
    // A post is a policy document or a signed file holding one.
    assert_eq!(
        DOC["paths"]["/api/policy"]["post"]["requestBody"]["content"]["application/json"]["schema"],
        json!({"oneOf": [
            {"$ref": "#/components/schemas/PolicyDocument"},
            {"$ref": "#/components/schemas/SignedPolicy"}
        ]})
    );
    assert_eq!(
        schemas["SignedPolicy"]["properties"]["policy"]["$ref"],
        "#/components/schemas/PolicyDocument"
    );
}

// ---------------------------------------------------------------------------------------------
// Every exchange through a real server

/// What the documented example values stand for on the test server.
struct Fixtures {
    agent_token: String,
    substitutions: Vec<(&'static str, String)>,
}

impl Fixtures {
    fn substitute(&self, value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(self.substitute_str(s)),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.substitute(v)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.substitute(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn substitute_str(&self, text: &str) -> String {
        self.substitutions
            .iter()
            .fold(text.to_owned(), |text, (literal, real)| {
                text.replace(literal, real)
            })
    }
}

async fn fixtures(server: &TestServer) -> Fixtures {
    server
        .post_policy(
            ADMIN,
            json!({"name": "fixture", "rules": [
                {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 50, "duration": "24h", "scope": "fleet"}},
                {"type": "alert_threshold", "config": {"severity": "critical", "countPerHour": 5, "notifyChannels": ["telegram", "email"]}},
                {"type": "auto_respond", "config": {"trigger": "malware", "action": "kill_process", "minConfidence": 0.9, "requireApproval": true}},
                {"type": "auto_respond", "config": {"trigger": "ransomware", "action": "kill_process", "minConfidence": 0.5}}
            ]}),
        )
        .await;
    let (agent, token) = server.enroll(ADMIN, "web-1").await;
    // Reports must be about a version the agent was sent: its stream gets v1 first.
    let mut stream = server.stream(&token, "default").await;
    assert_eq!(stream.next_policy().await.id, "1");
    let report = |body: Value| {
        let path = format!("/api/agents/{agent}/reports");
        let token = token.clone();
        async move {
            let (status, answer) = server.post(&path, &token, body).await;
            assert_eq!(status, StatusCode::CREATED, "{answer}");
            answer["data"].clone()
        }
    };
    report(json!({"action": "block_ip", "ip": "203.0.113.7", "duration": "24h", "scope": "fleet", "rule": 0, "policyVersion": "v1"})).await;
    let mut approvals = Vec::new();
    for pid in [1001, 1002, 1003] {
        let answer = report(json!({"action": "approval_request", "request": {"action": "kill_process", "pid": pid}, "rule": 2, "policyVersion": "v1"})).await;
        approvals.push(answer["approval"]["id"].as_str().unwrap().to_owned());
    }
    let (status, body) = server
        .post(
            &format!("/api/approvals/{}/deny", approvals[2]),
            ADMIN,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Rollouts: org `beta` has a first version for the `staged` exchange to roll out after;
    // org `gamma` runs the rollout the examples name `ro_0123456789abcdef` (its first stage
    // soaks an hour, so it stays at stage 0 while the exchanges read and pause it).
    for org in ["beta", "gamma"] {
        let (status, body) = server
            .post(
                &format!("/api/policy?org_id={org}"),
                ADMIN,
                json!({"name": "first", "rules": [{"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 50, "duration": "1h", "scope": "host"}}]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, rollout) = server
        .post(
            "/api/rollouts?org_id=gamma",
            ADMIN,
            json!({"policy": {"name": "second", "rules": [{"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 50, "duration": "1h", "scope": "host"}}]},
                   "stages": [{"percent": 10, "soakSecs": 3600}, {"percent": 100}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    let rollout = rollout["data"]["id"].as_str().unwrap().to_owned();
    // A shadow run of org `default` runs, so that the agent's stream starts with it; the test
    // ends it and starts run 2 once the stream is open (`shadow_end`, `shadow`), which the
    // heartbeat example reports about and the `DELETE /api/policy/shadow` exchange ends.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/policy?shadow=true",
            Some(ADMIN),
            Some(shadow_document()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let fixtures = Fixtures {
        agent_token: token,
        substitutions: vec![
            ("agent-a1b2c3d4", agent),
            ("apr_0123456789abcdef", approvals[0].clone()),
            ("apr_fedcba9876543210", approvals[1].clone()),
            ("apr_5a5a5a5a5a5a5a5a", approvals[2].clone()),
            ("ro_0123456789abcdef", rollout),
        ],
    };
    stream.close();
    fixtures
}

/// The document of the fixtures' shadow runs.
fn shadow_document() -> Value {
    json!({"name": "fixture shadow", "rules": [
        {"type": "block_ip", "config": {"trigger": "brute_force", "threshold": 10, "duration": "24h", "scope": "host"}}
    ]})
}

/// One request as the description builds it, and the answer it expects.
struct Request {
    method: Method,
    url: String,
    token: Option<String>,
    body: Option<Value>,
    /// The status the answer must have.
    expected: String,
    /// The exchange's name, whose error example must match the answer.
    example: Option<String>,
}

/// Where a request goes in the description.
struct Described<'a> {
    /// `METHOD /path` and what the request is, for messages.
    at: String,
    operation: &'static Value,
    /// JSON pointer of the operation.
    pointer: &'a str,
}

fn build(
    server: &TestServer,
    fixtures: &Fixtures,
    method: &str,
    path: &str,
    operation: &'static Value,
    name: &str,
) -> Request {
    let mut url = path.to_owned();
    let mut query = Vec::new();
    for parameter in parameters(operation) {
        let named = parameter["examples"].get(name).map(|e| &e["value"]);
        let value = match parameter["in"].as_str().unwrap() {
            "path" => named
                .or(parameter.get("example"))
                .unwrap_or_else(|| panic!("{method} {path}: path parameter without example")),
            _ => match named {
                Some(value) => value,
                None => continue,
            },
        };
        let text = match value {
            Value::String(s) => fixtures.substitute_str(s),
            other => other.to_string(),
        };
        let name = parameter["name"].as_str().unwrap();
        match parameter["in"].as_str().unwrap() {
            "path" => url = url.replace(&format!("{{{name}}}"), &text),
            _ => query.push(format!("{name}={text}")),
        }
    }
    if !query.is_empty() {
        url = format!("{url}?{}", query.join("&"));
    }
    let body = operation["requestBody"]["content"]["application/json"]["examples"]
        .get(name)
        .map(|e| fixtures.substitute(&e["value"]));
    assert!(
        body.is_some() || operation["requestBody"]["required"] != true,
        "{method} {path}: exchange `{name}` has no request body example"
    );
    let token = operation["security"][0]
        .as_object()
        .and_then(|requirement| requirement.keys().next())
        .map(|scheme| match scheme.as_str() {
            "adminToken" => ADMIN.to_owned(),
            "agentToken" => fixtures.agent_token.clone(),
            other => panic!("unknown scheme {other}"),
        });
    Request {
        method: Method::from_bytes(method.as_bytes()).unwrap(),
        url: format!("{}{url}", server.base),
        token,
        body,
        expected: String::new(),
        example: None,
    }
}

/// Sends `request` and checks the answer against the description: the expected status, a
/// documented status and media type, the body against its schema, and an error example of the
/// same name word for word.
async fn exchange(
    server: &TestServer,
    fixtures: &Fixtures,
    described: &Described<'_>,
    request: Request,
) {
    let Described {
        at,
        operation,
        pointer,
    } = described;
    let (expected, example) = (request.expected.as_str(), request.example.as_deref());
    let mut builder = server.client.request(request.method, &request.url);
    if let Some(token) = &request.token {
        builder = builder.bearer_auth(token);
    }
    if let Some(body) = &request.body {
        builder = builder.json(body);
    }
    let mut response = builder.send().await.unwrap();
    let status = response.status().as_u16().to_string();
    let url = &request.url;
    assert_eq!(status, expected, "{at} ({url})");
    let documented = operation["responses"]
        .get(&status)
        .unwrap_or_else(|| panic!("{at}: answered {status}, which is not documented ({url})"));
    let documented = resolve(documented);
    let media = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let content = documented["content"]
        .get(&media)
        .unwrap_or_else(|| panic!("{at} {status}: media type `{media}` is not documented"));
    let schema = response_schema_pointer(pointer, &status, documented, &media);
    if media == "text/event-stream" {
        let (event, data) = first_sse_event(&mut response).await;
        let events = &content["x-sse-events"];
        let reference = events[&event]["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("{at}: event `{event}` is not in x-sse-events"));
        check(reference.trim_start_matches('#'), &data).unwrap();
        return;
    }
    let text = response.text().await.unwrap();
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{at}: answer is not JSON ({e}): {text}"));
    check(&schema, &body).unwrap_or_else(|e| panic!("{at} ({url}): {e}"));
    let documented_example = example.and_then(|name| content["examples"].get(name));
    if let Some(documented_example) = documented_example.filter(|_| body["ok"] == false) {
        let documented = fixtures.substitute(&documented_example["value"]["error"]);
        for field in ["code", "message", "path"] {
            assert_eq!(
                body["error"][field], documented[field],
                "{at}: the error example differs from the answer ({url})"
            );
        }
    }
}

/// The first event of a stream: its `event:` name and its `data:` as JSON.
async fn first_sse_event(response: &mut reqwest::Response) -> (String, Value) {
    let deadline = Instant::now() + DEADLINE;
    let mut text = String::new();
    while !text.contains("\n\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, response.chunk())
            .await
            .expect("no event within the deadline")
            .unwrap()
            .expect("the stream ended");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let frame = &text[..text.find("\n\n").unwrap()];
    let field = |name: &str| {
        frame
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim_start)
            .unwrap_or_default()
            .to_owned()
    };
    (
        field("event:"),
        serde_json::from_str(&field("data:")).unwrap(),
    )
}

#[tokio::test]
async fn every_documented_exchange_gets_a_documented_answer_from_a_real_server() {
    let server = TestServer::start(false).await;
    let fixtures = fixtures(&server).await;
    // The agent's stream until the `GET /api/events` exchange replaces it: it gets v1 and the
    // fleet's block first, then the events of the exchanges before that one.
    let mut stream = server.stream(&fixtures.agent_token, "default").await;
    let (status, body) = server
        .call(Method::DELETE, "/api/policy/shadow", Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .call(
            Method::POST,
            "/api/policy?shadow=true",
            Some(ADMIN),
            Some(shadow_document()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"]["shadow"], 2);
    // The signed examples post to org `acme`, whose agent sees the signed version.
    let (status, enrolled) = server
        .post(
            "/api/agents/enroll",
            ADMIN,
            json!({"hostname": "acme-1", "orgId": "acme"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    let acme_token = enrolled["data"]["token"].as_str().unwrap().to_owned();
    let mut acme = server.stream(&acme_token, "acme").await;
    let mut count = 0;
    for (method, path, operation) in operations() {
        let pointer = format!("/paths/{}/{}", escape(&path), method.to_lowercase());
        let mut names = exchanges(operation);
        if names.is_empty() {
            names.insert(String::new());
        }
        for name in &names {
            let at = format!("{method} {path} `{name}`");
            let expected = match expected_response(operation, name) {
                Some((status, _)) => status,
                None => {
                    let success: Vec<&String> = operation["responses"]
                        .as_object()
                        .unwrap()
                        .keys()
                        .filter(|s| s.starts_with('2'))
                        .collect();
                    assert_eq!(success.len(), 1, "{at}: no response example of this name");
                    success[0].clone()
                }
            };
            let mut request = build(&server, &fixtures, &method, &path, operation, name);
            request.expected = expected;
            request.example = Some(name.clone());
            let described = Described {
                at,
                operation,
                pointer: &pointer,
            };
            exchange(&server, &fixtures, &described, request).await;
            count += 1;
        }
        // Without a token, and with a query parameter no endpoint takes.
        let first = names.iter().next().unwrap();
        let mut request = build(&server, &fixtures, &method, &path, operation, first);
        if request.token.is_some() {
            request.token = None;
            request.expected = "401".to_owned();
            let at = format!("{method} {path} without a token");
            let described = Described {
                at,
                operation,
                pointer: &pointer,
            };
            exchange(&server, &fixtures, &described, request).await;
        }
        let mut request = build(&server, &fixtures, &method, &path, operation, first);
        request.url.push_str(if request.url.contains('?') {
            "&bogus=1"
        } else {
            "?bogus=1"
        });
        request.expected = "400".to_owned();
        let at = format!("{method} {path} with an unknown query parameter");
        let described = Described {
            at,
            operation,
            pointer: &pointer,
        };
        exchange(&server, &fixtures, &described, request).await;
        count += 2;
    }
    assert!(count > 60, "{count}");

    // The agent's stream saw every kind of event the description names, each as described.
    let events = &DOC["paths"]["/api/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
        ["x-sse-events"];
    let mut seen = BTreeMap::new();
    while seen.len() < events.as_object().unwrap().len() {
        let event = stream.next_event().await;
        let reference = events[&event.event]["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("event `{}` is not described", event.event));
        check(reference.trim_start_matches('#'), &event.data).unwrap();
        *seen.entry(event.event).or_insert(0) += 1;
    }
    stream.close();
    // acme's agent saw the signed version (the `signed` exchange) with its signed part.
    let event = acme.next_event().await;
    assert_eq!(event.event, "policy");
    check("/components/schemas/PolicyEvent", &event.data).unwrap();
    let signed = &DOC["paths"]["/api/policy"]["post"]["requestBody"]["content"]["application/json"]
        ["examples"]["signed"]["value"];
    assert_eq!(event.data["signed"]["signature"], signed["signature"]);
    assert_eq!(event.data["signed"]["disabledRules"], json!([]));
    acme.close();
}

#[tokio::test]
async fn the_served_description_is_the_committed_file_and_needs_no_token() {
    let server = TestServer::start(false).await;
    let response = server
        .client
        .get(format!("{}/api/openapi.json", server.base))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json"))
            .unwrap();
    assert_eq!(response.text().await.unwrap(), committed);
}

#[tokio::test]
async fn an_address_locked_out_after_failed_authentications_gets_the_documented_429() {
    let dir = tempfile::Builder::new()
        .prefix(&format!("policy-openapi-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let server = TestServer::start_in(dir, |path| ServerConfig {
        auth_failures_per_minute: 1,
        ..common::config(path, false)
    })
    .await;
    let fixtures = Fixtures {
        agent_token: "agt_wrong".to_owned(),
        substitutions: Vec::new(),
    };
    let mut locked = 0;
    for (method, path, operation) in operations() {
        if operation["security"].as_array().unwrap().is_empty() {
            continue;
        }
        let pointer = format!("/paths/{}/{}", escape(&path), method.to_lowercase());
        let first = exchanges(operation).into_iter().next().unwrap_or_default();
        let mut request = build(&server, &fixtures, &method, &path, operation, &first);
        request.token = Some("adm_wrong".to_owned());
        // The first failure of this address is a 401; every later one a 429.
        request.expected = if locked == 0 { "401" } else { "429" }.to_owned();
        let described = Described {
            at: format!("{method} {path} with a wrong token"),
            operation,
            pointer: &pointer,
        };
        exchange(&server, &fixtures, &described, request).await;
        locked += 1;
    }
    assert!(locked > 15, "{locked}");
    // The answer says when to retry.
    let response = server
        .client
        .get(format!("{}/api/agents", server.base))
        .bearer_auth("adm_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
}
