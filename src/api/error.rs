//! The one error type of the HTTP API and its JSON body.
//!
//! Every refusal the API sends, whatever its cause (a spec that does not parse, a job the
//! manager does not know, a missing token, an unknown route), is an [`ApiError`] and goes
//! out as `{"error": "<message>", "field": "<path>"}` (`field` only when the problem is
//! about one field of the request). Messages pass through [`redact_text`] on their way
//! out, so an error that quotes part of a submitted body cannot carry a password.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::control::job_control::ControlError;
use crate::control::job_spec::{JobSpecError, DOCUMENT_PATH};
use crate::control::secret::{redact, REDACTED};

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What is wrong, for a person.
    pub error: String,
    /// The request field concerned (`sinks[0].kind`, `drop_slot`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Why the API refused a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The job manager refused (status by kind, see [`ApiError::status`]).
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The submitted job spec does not parse (400) or is not valid (422).
    #[error(transparent)]
    Spec(#[from] JobSpecError),
    /// Something else about the request is wrong (400): a query parameter, a path segment,
    /// a body that is not UTF-8.
    #[error("{message}")]
    BadRequest {
        message: String,
        field: Option<String>,
    },
    /// No or a wrong bearer token on a `/v1` route (401).
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// The read-only token on a route that changes something (403).
    #[error("the read-only token may not {method} {path}: only GET and HEAD; this needs the server's admin token")]
    ReadOnlyToken { method: String, path: String },
    /// No route has this path (404).
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    /// The path exists but not with this method (405).
    #[error("method {method} is not allowed on {path}; allowed: {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: String,
    },
    /// The body is larger than the limit (413).
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The body's media type is not one the route reads (415).
    #[error("{found}; send the job spec as {accepted}")]
    UnsupportedMediaType { found: String, accepted: String },
}

impl ApiError {
    /// A 400 about `field`.
    pub fn bad_request(message: impl Into<String>, field: Option<&str>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            field: field.map(str::to_owned),
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Control(e) => match e {
                ControlError::InvalidSpec(spec) => spec_status(spec),
                ControlError::NotFound(_) | ControlError::Missing(_) => StatusCode::NOT_FOUND,
                ControlError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                ControlError::AlreadyExists(_) | ControlError::Conflict(_) => StatusCode::CONFLICT,
                ControlError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                ControlError::TimedOut(_) => StatusCode::GATEWAY_TIMEOUT,
            },
            ApiError::Spec(spec) => spec_status(spec),
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::ReadOnlyToken { .. } => StatusCode::FORBIDDEN,
            ApiError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The request field the error is about, if any. A spec error about the document as a
    /// whole (a syntax error) names no field.
    pub fn field(&self) -> Option<&str> {
        let spec = match self {
            ApiError::Control(ControlError::InvalidSpec(spec)) | ApiError::Spec(spec) => spec,
            ApiError::BadRequest { field, .. } => return field.as_deref(),
            ApiError::Control(ControlError::Invalid { field, .. }) => return Some(field),
            _ => return None,
        };
        Some(spec.field()).filter(|field| *field != DOCUMENT_PATH && !field.is_empty())
    }

    /// The body sent for this error, with any password in the message redacted.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: redact_text(&self.to_string()),
            field: self.field().map(redact_text),
        }
    }
}

fn spec_status(e: &JobSpecError) -> StatusCode {
    match e {
        JobSpecError::Parse { .. } => StatusCode::BAD_REQUEST,
        JobSpecError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, axum::Json(self.body())).into_response();
        if let ApiError::Unauthorized = self {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// URL schemes after which a PostgreSQL URL (and maybe its password) follows.
const URL_SCHEMES: [&str; 2] = ["postgresql://", "postgres://"];

/// Hides every password in free text that may quote connection strings: the password of
/// every `postgres[ql]://user:password@...` URL in it (a URL ends at white space or a
/// quote), and the value of every `password=` (any case, spaces around `=` allowed,
/// wherever it starts: after a quote, a backtick, inside a word). Errs towards hiding too
/// much, like [`redact`].
pub fn redact_text(text: &str) -> String {
    // 1. URLs embedded anywhere in the text.
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find_url(rest) {
        out.push_str(&rest[..start]);
        let url = &rest[start..];
        let end = url
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .unwrap_or(url.len());
        out.push_str(&redact(&url[..end]));
        rest = &url[end..];
    }
    out.push_str(rest);
    // 2. `password=` pairs.
    redact_password_pairs(&out)
}

/// Byte offset of the first PostgreSQL URL scheme in `s` (ASCII case-insensitive).
fn find_url(s: &str) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    URL_SCHEMES
        .iter()
        .filter_map(|scheme| lower.find(scheme))
        .min()
}

/// Replaces the value after every `password=` with `***`. A value is single-quoted (up to
/// the closing quote, `\` escaping; to the end of the text when unterminated) or runs to
/// the next white space. A value that is `***` already (from a redacted URL query) stays.
fn redact_password_pairs(text: &str) -> String {
    const KEY: &str = "password";
    // ASCII lower-casing keeps byte offsets.
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find(KEY) {
        let key_end = search + found + KEY.len();
        search = key_end;
        let after_key = &text[key_end..];
        let Some(after_eq) = after_key.trim_start().strip_prefix('=') else {
            continue;
        };
        let value = after_eq.trim_start();
        let value_start = text.len() - value.len();
        let value_len = quoted_or_bare_len(value);
        let shown = &value[..value_len];
        if let Some(tail) = shown.strip_prefix(REDACTED) {
            if tail.is_empty() || tail.starts_with(['&', '#']) {
                search = value_start + REDACTED.len();
                continue;
            }
        }
        out.push_str(&text[copied..value_start]);
        out.push_str(REDACTED);
        copied = value_start + value_len;
        search = copied;
    }
    out.push_str(&text[copied..]);
    out
}

/// Length in bytes of the value at the start of `value` (see [`redact_password_pairs`]).
fn quoted_or_bare_len(value: &str) -> usize {
    let mut chars = value.char_indices();
    let quoted = value.starts_with('\'');
    if quoted {
        chars.next();
    }
    let mut escaped = false;
    for (i, c) in chars {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if quoted && c == '\'' {
            return i + 1;
        } else if !quoted && c.is_whitespace() {
            return i;
        }
    }
    value.len()
}
