//! Thin handlers, one module per resource (and [`admin`] for the console's own questions): each gets authenticated, checked and parsed inputs
//! from the route's filters, calls the fleet domain and answers in the envelope. Errors are
//! `ApiError`s, answered by the route as the error envelope.

pub mod admin;
pub mod agents;
pub mod approvals;
pub mod audit;
pub mod blocks;
pub mod events;
pub mod policies;
pub mod reports;
pub mod rollouts;
pub mod shadows;

use policy_engine::protocol::Envelope;
use serde::Serialize;
use warp::Reply;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::error::ApiError;

/// What a handler answers: a response, or an error answered in the envelope.
pub type Answer = Result<Response, ApiError>;

/// `{"ok":true,"data":...}` with `status`.
pub fn ok<T: Serialize>(status: StatusCode, data: &T) -> Answer {
    Ok(warp::reply::with_status(warp::reply::json(&Envelope::ok(data)), status).into_response())
}
