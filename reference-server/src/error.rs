//! The API's error type: a status, a stable code, a message (and the path of the offending
//! value), answered in the protocol's error envelope. Every layer returns it; the HTTP layer's
//! one `recover()` maps warp's own rejections to it too.

use policy_engine::protocol::{ErrorBody, ErrorEnvelope, ErrorItem};
use policy_engine::{PolicyError, ValidationError};
use warp::Reply;
use warp::http::StatusCode;
use warp::reply::Response;

/// An error answered as `{"ok":false,"error":{"code","message","path"?,"errors"?}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `validation_failed`.
    pub code: &'static str,
    /// Human-readable message, lowercase, without a trailing period.
    pub message: String,
    /// JSON path of the offending value, when the error concerns one.
    pub path: Option<String>,
    /// Every validation error of the document (422 only), the first being `message`/`path`.
    pub errors: Vec<ValidationError>,
    /// Seconds to wait before trying again (429 only), sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl warp::reject::Reject for ApiError {}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        self.to_response()
    }
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            path: None,
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// 400 `malformed_json`.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_json", message)
    }

    /// 400 `bad_request` (a bad query string).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409 `conflict`: the resource is no longer in a state that allows the request (an
    /// approval already decided or expired).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// The same error about the value at `path`.
    pub fn at(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this path",
        )
    }

    /// 413 `payload_too_large`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 408 `request_timeout`: the request (its body) did not arrive in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message)
    }

    /// 429 `too_many_requests`: a rate limit or quota is spent; `Retry-After: retry_after_secs`.
    pub fn too_many(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
        }
    }

    /// 503 `unavailable`: the server is shutting down.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the server is shutting down",
        )
    }

    /// 503 `unavailable`: the database cannot be reached for now; `Retry-After:
    /// retry_after_secs`.
    pub fn database_unavailable(retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the database is unavailable; retry in {retry_after_secs} s"),
            )
        }
    }

    /// 503 `unavailable` for another reason than shutting down (a limit of open streams).
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 422 `validation_failed` at `path`.
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        let error = ValidationError::new(path, message);
        Self::from_validation(vec![error])
    }

    /// 422 `validation_failed` with every error; the first one is the envelope's message.
    pub fn from_validation(errors: Vec<ValidationError>) -> Self {
        let (message, path) = match errors.first() {
            Some(first) => (first.message.clone(), Some(first.path.clone())),
            None => ("invalid document".to_owned(), None),
        };
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation_failed",
            message,
            // The root's path is `""`, as in `errors` (probe 6: the envelope left it out).
            path,
            errors,
            retry_after: None,
        }
    }

    /// `result` with the duplicate keys found while reading its document: a 422 listing them
    /// first, then the document's other validation errors (if `result` is one); a document
    /// valid but for its duplicates is refused all the same. Other errors stay as they are.
    pub fn with_duplicates<T>(
        result: Result<T, Self>,
        duplicates: Vec<ValidationError>,
    ) -> Result<T, Self> {
        if duplicates.is_empty() {
            return result;
        }
        match result {
            Ok(_) => Err(Self::from_validation(duplicates)),
            Err(error) if error.code == "validation_failed" => {
                let mut errors = duplicates;
                errors.extend(error.errors);
                Err(Self::from_validation(errors))
            }
            Err(error) => Err(error),
        }
    }

    /// A document rejected by the policy library: syntax errors are 400, the rest 422.
    pub fn from_policy(error: PolicyError) -> Self {
        match error.first() {
            Some(first) if is_syntax_error(first) => Self::malformed(first.message.clone()),
            _ => Self::from_validation(error.errors),
        }
    }

    /// 500 `internal`; the detail is logged, not shown.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let detail = detail.to_string();
        tracing::error!(detail = detail.as_str(), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }

    /// The error as an HTTP response, in the protocol's [`ErrorEnvelope`].
    pub fn to_response(&self) -> Response {
        let body = ErrorEnvelope::new(ErrorBody {
            code: self.code.to_owned(),
            message: self.message.clone(),
            path: self.path.clone(),
            errors: self
                .errors
                .iter()
                .map(|e| ErrorItem {
                    path: e.path.clone(),
                    message: e.message.clone(),
                })
                .collect(),
        });
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(
                warp::http::header::RETRY_AFTER,
                warp::http::HeaderValue::from(secs),
            );
        }
        response
    }
}

impl From<Vec<ValidationError>> for ApiError {
    /// 422 with every error (a strict reader's result).
    fn from(errors: Vec<ValidationError>) -> Self {
        Self::from_validation(errors)
    }
}

/// Whether a library error is a JSON syntax error (400) rather than a validation error (422).
pub fn is_syntax_error(error: &ValidationError) -> bool {
    error.path.is_empty() && error.message.starts_with("invalid JSON")
}
