//! The HTTP side of the metrics: every API request counted and timed by route (the OpenAPI
//! path template) and status, and `GET /metrics`, served only on the `--metrics-listen`
//! address, which refreshes the fleet's gauges and answers every metric as OpenMetrics text.

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::http::header::{CONTENT_TYPE, HeaderValue};
use warp::reply::Response;
use warp::{Filter, Reply};

use super::filters::{query, with_state};
use super::openapi::route_template;
use super::recover::recover;
use crate::app::AppState;
use crate::error::ApiError;
use crate::fleet::gauges;
use crate::metrics::{CONTENT_TYPE as OPENMETRICS, ServerMetrics};

/// The `route` label of a path no route has.
pub const UNMATCHED: &str = "unmatched";

/// `routes`, with each answer counted and timed into `metrics`.
pub fn observed(
    routes: BoxedFilter<(Response,)>,
    metrics: Arc<ServerMetrics>,
) -> BoxedFilter<(Response,)> {
    let log = warp::log::custom(move |info: warp::log::Info<'_>| {
        let route = route_template(info.path()).unwrap_or(UNMATCHED);
        metrics.request(
            info.method().as_str(),
            route,
            info.status().as_u16(),
            info.elapsed(),
        );
    });
    routes.with(log).map(Reply::into_response).boxed()
}

/// The metrics listener's routes: `GET /metrics`, and the error envelope for anything else.
pub fn routes(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    warp::path!("metrics")
        .and(warp::get())
        .and(query(&[]))
        .and(with_state(&state))
        .then(|_, state: Arc<AppState>| scrape(state))
        .recover(recover)
        .unify()
        .boxed()
}

/// Reads the fleet's gauges and encodes every metric.
async fn scrape(state: Arc<AppState>) -> Response {
    match gauges::read(&*state.store, &state.hub, state.online_window).await {
        Ok(orgs) => {
            let mut response = Response::new(state.metrics.scrape(&orgs).into());
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            response
        }
        Err(error) => ApiError::from(error).to_response(),
    }
}
