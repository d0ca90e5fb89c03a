//! `GET /metrics` over plain HTTP/1.1 (hyper): the agent's metrics for a Prometheus scraper,
//! on an address the operator chooses (loopback, or the monitoring network). At most
//! [`MAX_CONNECTIONS`] connections at once, each with a header timeout; anything but
//! `GET /metrics` without a query is refused.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::{AgentMetrics, CONTENT_TYPE as OPENMETRICS};

/// Most connections served at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 16;

/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A running metrics endpoint; dropping it stops it.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    pub(super) async fn start(addr: SocketAddr, metrics: AgentMetrics) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, metrics));
        tracing::info!(%local_addr, "metrics on http://{local_addr}/metrics");
        Ok(Self { local_addr, task })
    }

    /// The bound address (the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, metrics: AgentMetrics) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let answer = answer(&request, &metrics);
                async move { Ok::<_, Infallible>(answer) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "metrics: connection ended with an error");
            }
            drop(permit);
        });
    }
}

fn answer(request: &Request<Incoming>, metrics: &AgentMetrics) -> Response<String> {
    let (status, body) = if request.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "no such endpoint: try /metrics\n".to_owned(),
        )
    } else if request.method() != Method::GET {
        (StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned())
    } else if request.uri().query().is_some() {
        (
            StatusCode::BAD_REQUEST,
            "/metrics takes no query parameters\n".to_owned(),
        )
    } else {
        let mut response = Response::new(metrics.encode());
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
        return response;
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}
