//! The client-facing endpoints, and which account kinds serve each: the one
//! table that decides where a request may go.
use aiproxy_shared::domain::{AccountKind, Platform};

use crate::errors::ErrorShape;

/// A relayed endpoint, as the client called it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/messages`
    AnthropicMessages,
    /// `POST /v1/messages/count_tokens`
    AnthropicCountTokens,
    /// `POST /v1/chat/completions`
    OpenAiChat,
    /// `POST /v1/responses` (and `/responses`)
    OpenAiResponses,
    /// `POST /v1beta/models/{model}:generateContent` or `:streamGenerateContent`
    GeminiGenerate { model: String, stream: bool },
    /// `POST /v1beta/models/{model}:countTokens`
    GeminiCountTokens { model: String },
}

/// What a path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Relay(Endpoint),
    /// `GET /v1/models`: the models the key may use.
    ListModels,
    /// `GET /v1beta/models`
    GeminiListModels,
    Healthz,
    Readyz,
    NotFound,
}

pub fn route(method: &http::Method, path: &str) -> Route {
    use http::Method;
    match (method, path) {
        (&Method::POST, "/v1/messages") => Route::Relay(Endpoint::AnthropicMessages),
        (&Method::POST, "/v1/messages/count_tokens") => {
            Route::Relay(Endpoint::AnthropicCountTokens)
        }
        (&Method::POST, "/v1/chat/completions" | "/chat/completions") => {
            Route::Relay(Endpoint::OpenAiChat)
        }
        (&Method::POST, "/v1/responses" | "/responses") => Route::Relay(Endpoint::OpenAiResponses),
        (&Method::GET, "/v1/models" | "/models") => Route::ListModels,
        (&Method::GET, "/v1beta/models") => Route::GeminiListModels,
        (&Method::GET, "/healthz") => Route::Healthz,
        (&Method::GET, "/readyz") => Route::Readyz,
        (&Method::POST, p) if p.starts_with("/v1beta/models/") => {
            gemini(&p["/v1beta/models/".len()..])
        }
        _ => Route::NotFound,
    }
}

fn gemini(rest: &str) -> Route {
    let Some((model, action)) = rest.rsplit_once(':') else {
        return Route::NotFound;
    };
    if model.is_empty() || model.contains('/') {
        return Route::NotFound;
    }
    let model = model.to_string();
    match action {
        "generateContent" => Route::Relay(Endpoint::GeminiGenerate {
            model,
            stream: false,
        }),
        "streamGenerateContent" => Route::Relay(Endpoint::GeminiGenerate {
            model,
            stream: true,
        }),
        "countTokens" => Route::Relay(Endpoint::GeminiCountTokens { model }),
        _ => Route::NotFound,
    }
}

impl Endpoint {
    /// Account kinds that serve this endpoint; `adapters::build` knows how
    /// to call each of them.
    pub fn kinds(&self) -> &'static [AccountKind] {
        use AccountKind::*;
        match self {
            Endpoint::AnthropicMessages | Endpoint::AnthropicCountTokens => {
                &[ClaudeApi, ClaudeOauth, ClaudeSessionKey]
            }
            Endpoint::OpenAiChat => &[OpenAi],
            Endpoint::OpenAiResponses => &[OpenAiResponses, OpenAi],
            Endpoint::GeminiGenerate { .. } | Endpoint::GeminiCountTokens { .. } => {
                &[GeminiApi, GeminiOauth]
            }
        }
    }

    pub fn platform(&self) -> Platform {
        match self {
            Endpoint::AnthropicMessages | Endpoint::AnthropicCountTokens => Platform::Anthropic,
            Endpoint::OpenAiChat | Endpoint::OpenAiResponses => Platform::OpenAi,
            Endpoint::GeminiGenerate { .. } | Endpoint::GeminiCountTokens { .. } => {
                Platform::Gemini
            }
        }
    }

    pub fn error_shape(&self) -> ErrorShape {
        match self.platform() {
            Platform::Anthropic => ErrorShape::Anthropic,
            Platform::OpenAi => ErrorShape::OpenAi,
            Platform::Gemini => ErrorShape::Google,
        }
    }

    /// The name recorded in `request_logs.endpoint`.
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::AnthropicMessages => "/v1/messages",
            Endpoint::AnthropicCountTokens => "/v1/messages/count_tokens",
            Endpoint::OpenAiChat => "/v1/chat/completions",
            Endpoint::OpenAiResponses => "/v1/responses",
            Endpoint::GeminiGenerate { stream: false, .. } => "generateContent",
            Endpoint::GeminiGenerate { stream: true, .. } => "streamGenerateContent",
            Endpoint::GeminiCountTokens { .. } => "countTokens",
        }
    }

    /// Token counting is answered by the upstream but never billed.
    pub fn is_billed(&self) -> bool {
        !matches!(
            self,
            Endpoint::AnthropicCountTokens | Endpoint::GeminiCountTokens { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn paths_route_to_endpoints() {
        assert_eq!(
            route(&Method::POST, "/v1/messages"),
            Route::Relay(Endpoint::AnthropicMessages)
        );
        assert_eq!(
            route(&Method::POST, "/v1/messages/count_tokens"),
            Route::Relay(Endpoint::AnthropicCountTokens)
        );
        assert_eq!(
            route(&Method::POST, "/responses"),
            Route::Relay(Endpoint::OpenAiResponses)
        );
        assert_eq!(route(&Method::GET, "/v1/models"), Route::ListModels);
        assert_eq!(
            route(
                &Method::POST,
                "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
            ),
            Route::Relay(Endpoint::GeminiGenerate {
                model: "gemini-2.5-pro".into(),
                stream: true
            })
        );
        assert_eq!(
            route(&Method::POST, "/v1beta/models/gemini-2.5-flash:countTokens"),
            Route::Relay(Endpoint::GeminiCountTokens {
                model: "gemini-2.5-flash".into()
            })
        );
        assert_eq!(
            route(&Method::POST, "/v1beta/models/x:delete"),
            Route::NotFound
        );
        assert_eq!(
            route(&Method::POST, "/v1beta/models/:generateContent"),
            Route::NotFound
        );
        assert_eq!(route(&Method::GET, "/v1/messages"), Route::NotFound);
    }
}
