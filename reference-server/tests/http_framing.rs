//! HTTP framing against the real binary over TLS: HTTP/2 looked at frame by frame with the
//! `h2` client (answers given before the request body was read, answers to `HEAD`), and the
//! size of an HTTP/1.1 request head.

use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use serde_json::Value;
use warp::http::{Method, Request, StatusCode};

use crate::hostile_common::*;

/// How long the test waits after an early answer before sending the rest of its body: time
/// for a reset the server would send to arrive.
const CLIENT_PAUSE: Duration = Duration::from_millis(300);

/// An HTTP/2 connection to `server` (ALPN `h2`).
async fn connect(server: &Server) -> SendRequest<Bytes> {
    let tls = server.tls_from(ip("127.0.0.1"), "h2").await;
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client.ready().await.unwrap()
}

/// Reads a response body to its end.
async fn body_of(mut body: h2::RecvStream) -> Value {
    let mut bytes = Vec::new();
    while let Some(chunk) = tokio::time::timeout(DEADLINE, body.data())
        .await
        .unwrap_or_else(|_| panic!("the body ends within the deadline"))
    {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&bytes).unwrap()
}

/// curl 7.88 sends a POST's headers, then its body: when the answer came first (no token,
/// the wrong role, an unknown query parameter, an unknown path) the server reset the stream
/// once it had answered (`RST_STREAM`, `NO_ERROR`), and curl threw the answer away ("stream
/// error in the HTTP/2 framing layer", no status). Now the rest of the body is read after the
/// answer: the client finishes sending, the stream ends without a reset, and the answer is
/// read whole. Over one connection, which stays usable throughout.
#[tokio::test]
async fn answers_before_the_body_end_the_stream_without_a_reset() {
    let server = Server::start(&[]);
    let (_, agent_token) = server.enroll("h2-agent").await;
    let mut client = connect(&server).await;
    let cases = [
        (
            "/api/policy",
            None,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "/api/policy",
            Some(agent_token.as_str()),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "/api/policy?dryrun=true",
            Some(ADMIN),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        ("/api/nope", Some(ADMIN), StatusCode::NOT_FOUND, "not_found"),
    ];
    for (path, token, status, code) in cases {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("https://localhost{path}"))
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let (response, mut send) = client
            .send_request(request.body(()).unwrap(), false)
            .unwrap();
        send.send_data(Bytes::from_static(b"{\"name\": \"early\", "), false)
            .unwrap();
        let response = tokio::time::timeout(DEADLINE, response)
            .await
            .unwrap_or_else(|_| panic!("an answer within the deadline"))
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
        tokio::time::sleep(CLIENT_PAUSE).await;
        // A reset stream would refuse the rest of the body, or report the reset.
        let reset = std::future::poll_fn(|cx| std::task::Poll::Ready(send.poll_reset(cx))).await;
        assert!(
            matches!(reset, std::task::Poll::Pending),
            "{path}: the server reset the stream after its {status} answer: {reset:?}"
        );
        send.send_data(Bytes::from_static(b"\"rules\": []}"), true)
            .unwrap_or_else(|e| panic!("{path}: the rest of the body was refused: {e}"));
        let answer = body_of(response.into_body()).await;
        assert_eq!(answer["ok"], false, "{path}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{path}: {answer}");
    }
    // The same connection still serves.
    let request = Request::builder()
        .method(Method::GET)
        .uri("https://localhost/api/agents")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_of(response.into_body()).await["ok"], true);
}

/// `HEAD` over HTTP/2: the headers of the answer and no body. The server sent the 405's JSON
/// body in a DATA frame, which a client must treat as a protocol error (curl: "stream 1 was not
/// closed cleanly: PROTOCOL_ERROR").
#[tokio::test]
async fn head_answers_carry_no_body() {
    let server = Server::start(&[]);
    let mut client = connect(&server).await;
    let request = Request::builder()
        .method(Method::HEAD)
        .uri("https://localhost/api/policy/active")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .unwrap_or_else(|_| panic!("an answer within the deadline"))
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["content-type"], "application/json");
    let mut body = response.into_body();
    assert!(
        tokio::time::timeout(DEADLINE, body.data())
            .await
            .unwrap_or_else(|_| panic!("the stream ends within the deadline"))
            .is_none(),
        "a HEAD answer carried a body"
    );
}

/// The head of `request` answered over HTTP/1.1 and TLS (`None` if the connection ended first),
/// written while the answer is read: the server may answer before the head's end.
async fn http1_head(server: &Server, request: String) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = server.tls_from(ip("127.0.0.1"), "http/1.1").await;
    let (mut read, mut write) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        // The server may close the connection before all of it is written.
        let _ = write.write_all(request.as_bytes()).await;
        write
    });
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let head = loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some((head, _)) = text.split_once("\r\n\r\n") {
            break Some(head.to_owned());
        }
        match tokio::time::timeout(DEADLINE, read.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no answer within {DEADLINE:?}"))
        {
            Ok(0) | Err(_) => break None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    };
    writer.abort();
    head
}

/// An HTTP/1.1 request head over the limit (64 KiB) gets `431` at once. Over TLS a head of 128
/// KiB or more used to get no answer at all: the connection was closed 10 s later by the
/// header-read timeout. A head under the limit is served.
#[tokio::test]
async fn an_oversized_http1_head_gets_431_at_once() {
    let server = Server::start(&[]);
    let request = |pad: usize| {
        format!(
            "GET /api/policy/active HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {ADMIN}\r\nx-pad: {}\r\n\r\n",
            "p".repeat(pad)
        )
    };
    let served = http1_head(&server, request(60 * 1024)).await.unwrap();
    assert!(served.starts_with("HTTP/1.1 404 "), "{served}");
    for pad in [70 * 1024, 150 * 1024, 1024 * 1024] {
        let started = std::time::Instant::now();
        let refused = http1_head(&server, request(pad))
            .await
            .unwrap_or_else(|| panic!("{pad}: the connection ended without an answer"));
        assert!(refused.starts_with("HTTP/1.1 431 "), "{pad}: {refused}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{pad}: answered after {:?}",
            started.elapsed()
        );
    }
}

/// The whole answer to `request` over HTTP/1.1 and TLS, read until the server closes.
async fn http1_answer(server: &Server, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = server.tls_from(ip("127.0.0.1"), "http/1.1").await;
    tls.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    // A TLS close without close_notify still ends the answer.
    let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("the connection was not closed within {DEADLINE:?}"));
    String::from_utf8_lossy(&answer).into_owned()
}

/// Bytes that are not an HTTP/1 request get a 400 in the API's envelope, like every other
/// answer (hyper answered them with an empty body), and the connection is closed.
#[tokio::test]
async fn malformed_http1_requests_are_answered_in_the_envelope() {
    let server = Server::start(&[]);
    for (request, why) in [
        (&b"GARBAGE\r\n\r\n"[..], "invalid request line"),
        (b"GET /api/policy/active HTTP/9.9\r\nhost: x\r\n\r\n", "unsupported HTTP version"),
        (b"GET /api/policy/active HTTP/1.1\r\nno colon here\r\n\r\n", "invalid header line"),
        (
            b"POST /api/policy HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n",
            "invalid Content-Length header",
        ),
        (
            b"POST /api/policy HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
            "invalid Content-Length header",
        ),
    ] {
        let answer = http1_answer(&server, request).await;
        let shown = String::from_utf8_lossy(request);
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{shown:?}: no answer head in {answer:?}"));
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{shown:?}: {head}");
        assert!(head.contains("\r\nconnection: close"), "{shown:?}: {head}");
        let body: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{shown:?}: not JSON ({e}): {body:?}"));
        assert_eq!(body["ok"], false, "{shown:?}");
        assert_eq!(body["error"]["code"], "bad_request", "{shown:?}");
        assert_eq!(
            body["error"]["message"],
            format!("malformed HTTP request: {why}"),
            "{shown:?}"
        );
    }
    // A well-formed request on a new connection is still served.
    let served = http1_head(
        &server,
        format!(
            "GET /api/policy/active HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN}\r\n\r\n"
        ),
    )
    .await
    .unwrap();
    assert!(served.starts_with("HTTP/1.1 404 "), "{served}");
}
