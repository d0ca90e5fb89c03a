//! Validation errors: every problem of a document, each with the JSON path where it was found.

use std::fmt;

/// One problem found in a policy document.
///
/// `path` is the JSON path of the offending value in the form `rules[1].config.minConfidence`;
/// it is empty when the problem concerns the document as a whole (malformed JSON, size limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// JSON path of the offending value, empty for the whole document.
    pub path: String,
    /// What was expected and what was found, lowercase, without a trailing period.
    pub message: String,
}

impl ValidationError {
    /// Creates an error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ValidationError {}

/// A policy document that could not be accepted, with every error it contains.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", display_errors(.errors))]
pub struct PolicyError {
    /// All errors of the document: its duplicate keys first (when read from bytes), then the
    /// rest in document order. Never empty.
    pub errors: Vec<ValidationError>,
}

impl PolicyError {
    /// Wraps a single error.
    pub fn single(error: ValidationError) -> Self {
        Self {
            errors: vec![error],
        }
    }

    /// The first error, which is what a single-line report (an HTTP error envelope) shows.
    pub fn first(&self) -> Option<&ValidationError> {
        self.errors.first()
    }
}

fn display_errors(errors: &[ValidationError]) -> String {
    match errors {
        [] => "invalid policy".to_owned(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more errors)", rest.len()),
    }
}
