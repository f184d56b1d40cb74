//! Provider adapters: for each provider, the upstream URL of an endpoint and the header that
//! carries the key. This is the one place a provider key is exposed (`expose_to_upstream`).

use crate::dialect::Dialect;
use airlock_secrets::Secret;
use http::{HeaderName, HeaderValue};

/// The proxied endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/completions`
    Completions,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `POST /v1/responses`
    Responses,
    /// `GET /v1/models`
    Models,
    /// `POST /v1/messages`
    Messages,
    /// `POST /v1/messages/count_tokens`
    CountTokens,
}

impl Endpoint {
    /// The path clients call.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
            Endpoint::Models => "/v1/models",
            Endpoint::Messages => "/v1/messages",
            Endpoint::CountTokens => "/v1/messages/count_tokens",
        }
    }

    /// The dialect of the endpoint.
    pub fn dialect(self) -> Dialect {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => Dialect::Anthropic,
            _ => Dialect::OpenAi,
        }
    }

    /// Whether a response of this endpoint consumes tokens worth recording.
    pub fn is_inference(self) -> bool {
        !matches!(self, Endpoint::Models | Endpoint::CountTokens)
    }
}

/// Provider kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// api.openai.com
    OpenAi,
    /// api.anthropic.com
    Anthropic,
    /// Azure OpenAI deployment
    Azure,
    /// Any OpenAI-compatible base URL (Gemini's OpenAI endpoint, Groq, Mistral, vLLM, Ollama…)
    OpenAiCompatible,
}

const AZURE_API_VERSION: &str = "2024-10-21";

impl ProviderKind {
    /// Parses the `--provider` value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "openai" => ProviderKind::OpenAi,
            "anthropic" => ProviderKind::Anthropic,
            "azure" | "azure-openai" => ProviderKind::Azure,
            "openai-compatible" | "compatible" => ProviderKind::OpenAiCompatible,
            _ => return None,
        })
    }

    /// The canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Azure => "azure",
            ProviderKind::OpenAiCompatible => "openai-compatible",
        }
    }

    /// The API dialect the provider speaks.
    pub fn dialect(self) -> Dialect {
        match self {
            ProviderKind::Anthropic => Dialect::Anthropic,
            _ => Dialect::OpenAi,
        }
    }

    /// The base URL used when the credential names none.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenAi => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            _ => None,
        }
    }

    /// Upstream URL for an endpoint, from the base URL as the provider's own SDK takes it.
    pub fn url(self, base: &str, ep: Endpoint) -> String {
        let (base, query) = match base.split_once('?') {
            Some((b, q)) => (b.trim_end_matches('/'), Some(q)),
            None => (base.trim_end_matches('/'), None),
        };
        match self {
            ProviderKind::Anthropic => format!("{base}{}", ep.path()),
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => {
                let suffix = ep.path().strip_prefix("/v1").unwrap_or(ep.path());
                match query {
                    Some(q) => format!("{base}{suffix}?{q}"),
                    None => format!("{base}{suffix}"),
                }
            }
            ProviderKind::Azure => {
                let suffix = ep.path().strip_prefix("/v1").unwrap_or(ep.path());
                let q = query
                    .filter(|q| q.contains("api-version="))
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("api-version={AZURE_API_VERSION}"));
                format!("{base}{suffix}?{q}")
            }
        }
    }

    /// The header that carries the key. The value is marked sensitive so HTTP/2 never indexes
    /// it and `Debug` of the header map does not show it.
    #[allow(clippy::disallowed_methods)] // the one place a provider key leaves (clippy.toml)
    pub fn auth_header(self, key: &Secret) -> Option<(HeaderName, HeaderValue)> {
        let (name, value) = match self {
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => (
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&zeroize::Zeroizing::new(format!(
                    "Bearer {}",
                    key.expose_to_upstream()
                )))
                .ok()?,
            ),
            ProviderKind::Azure => (
                HeaderName::from_static("api-key"),
                HeaderValue::from_str(key.expose_to_upstream()).ok()?,
            ),
            ProviderKind::Anthropic => (
                HeaderName::from_static("x-api-key"),
                HeaderValue::from_str(key.expose_to_upstream()).ok()?,
            ),
        };
        let mut value = value;
        value.set_sensitive(true);
        Some((name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let o = ProviderKind::OpenAi;
        assert_eq!(
            o.url("https://api.openai.com/v1", Endpoint::ChatCompletions),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            o.url("http://h/v1/", Endpoint::Models),
            "http://h/v1/models"
        );
        let a = ProviderKind::Anthropic;
        assert_eq!(
            a.url("https://api.anthropic.com", Endpoint::CountTokens),
            "https://api.anthropic.com/v1/messages/count_tokens"
        );
        let z = ProviderKind::Azure;
        assert_eq!(
            z.url("https://r.openai.azure.com/openai/deployments/gpt4o", Endpoint::ChatCompletions),
            "https://r.openai.azure.com/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            z.url(
                "https://r/openai/deployments/d?api-version=2025-01-01",
                Endpoint::Embeddings
            ),
            "https://r/openai/deployments/d/embeddings?api-version=2025-01-01"
        );
        let k = Secret::new("k-123456789012".into());
        let (n, v) = ProviderKind::Azure.auth_header(&k).unwrap();
        assert_eq!(n, "api-key");
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("k-123"));
    }
}
