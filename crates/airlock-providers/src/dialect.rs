//! Errors in the client's own API dialect (invariant I8): an OpenAI SDK gets
//! `{"error":{"message","type","code"}}`, an Anthropic SDK `{"type":"error","error":{...}}`, so
//! each SDK raises its usual exception class with airlock's message.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};

/// Which API the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI and OpenAI-compatible clients.
    OpenAi,
    /// Anthropic clients.
    Anthropic,
}

impl Dialect {
    /// Anthropic for `/v1/messages…`, OpenAI for everything else.
    pub fn for_path(path: &str) -> Self {
        if path.starts_with("/v1/messages") {
            Dialect::Anthropic
        } else {
            Dialect::OpenAi
        }
    }
}

/// A refusal or failure to send to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Short machine-readable code (`invalid_token`, `model_not_allowed`, …).
    pub code: &'static str,
    /// What happened and what to do; never contains a secret.
    pub message: String,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with the request's problem.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// Renders in a dialect.
    pub fn render(&self, dialect: Dialect) -> Response {
        let body = match dialect {
            Dialect::OpenAi => serde_json::json!({
                "error": {
                    "message": self.message,
                    "type": if self.code == "insufficient_quota" { "insufficient_quota" } else { openai_type(self.status) },
                    "param": null,
                    "code": self.code,
                }
            }),
            Dialect::Anthropic => serde_json::json!({
                "type": "error",
                "error": { "type": anthropic_type(self.status), "message": self.message }
            }),
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.code == "insufficient_quota" {
            // Retrying cannot help until the budget resets or grows: the SDKs honour this.
            resp.headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        } else if self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
        {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        resp.headers_mut()
            .insert("x-airlock-error", HeaderValue::from_static(self.code));
        resp
    }
}

fn openai_type(s: StatusCode) -> &'static str {
    match s.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

fn anthropic_type(s: StatusCode) -> &'static str {
    match s.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        529 | 503 => "overloaded_error",
        _ => "api_error",
    }
}

/// An error that knows the dialect it will be rendered in.
pub struct DialectError(pub Dialect, pub ApiError);

impl IntoResponse for DialectError {
    fn into_response(self) -> Response {
        self.1.render(self.0)
    }
}
