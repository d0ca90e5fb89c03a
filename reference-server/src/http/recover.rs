//! The one `recover()`: every rejection (an unknown path, a wrong method, a bad query string,
//! a filter's [`ApiError`]) answered in the JSON error envelope.

use std::convert::Infallible;

use warp::Rejection;
use warp::reply::Response;

use super::body::MAX_BODY_BYTES;
use crate::error::ApiError;

/// Maps a rejection to the envelope.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if let Some(error) = rejection.find::<ApiError>() {
        error.clone()
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::method_not_allowed()
    } else if rejection.is_not_found() {
        ApiError::not_found("no such endpoint")
    } else if let Some(err) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::bad_request(format!("invalid query string: {err}"))
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::too_large(MAX_BODY_BYTES)
    } else if let Some(err) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::bad_request(err.to_string())
    } else {
        ApiError::internal(format!("unhandled rejection: {rejection:?}"))
    };
    Ok(error.to_response())
}
