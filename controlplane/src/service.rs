//! The control plane's capabilities, one typed operation each: who may do
//! it, validation, sealing and the store transaction (the store signals the
//! snapshot publisher itself when it commits). The admin REST API,
//! declarative apply and the management gRPC service are adapters over it.
pub mod accounts;
pub mod apply;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod keys;
pub mod oauth;
pub mod packages;
pub mod prices;
pub mod settings;
pub mod throttle;
pub mod usage;
pub mod users;

use aiproxy_shared::domain::Role;

use crate::crypto::{JwtKeys, Sealer};
use crate::publisher::Publisher;
use crate::store::{Store, StoreError, User};

/// What every operation can reach.
#[derive(Clone)]
pub struct Services {
    pub store: Store,
    /// Wrong passwords per account and address.
    pub password_throttle: throttle::PasswordThrottle,
    /// Password checks at once.
    pub login_gate: throttle::LoginGate,
    pub sealer: Sealer,
    pub jwt: JwtKeys,
    pub publisher: Publisher,
    pub refresher: crate::oauth::Refresher,
    pub health: crate::health::HealthChecker,
    /// The scheduling state the data planes share.
    pub state: std::sync::Arc<dyn aiproxy_shared::state::StateStore>,
    /// The zone package periods and daily usage are counted in.
    pub billing_tz: chrono::FixedOffset,
    /// Defaults of the runtime settings.
    pub setting_defaults: crate::settings::Defaults,
    /// The data planes this control plane serves, and what they applied.
    pub nodes: crate::grpc::NodeRegistry,
    /// OAuth endpoints, for the sign-in flow of new subscriptions.
    pub oauth_endpoints: aiproxy_shared::config::OAuthSettings,
    /// Follow-up work an operation starts (a token refresh after a change),
    /// waited for at shutdown.
    pub tasks: tokio_util::task::TaskTracker,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// Why an operation failed; the adapters render it (the REST API as
/// `{"error":{"code","message"}}`, gRPC as a status).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    /// A dependency (the shared state store) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
    /// Too many wrong passwords: tries wait this long, unchecked.
    #[error("too many wrong passwords; try again in {} s", whole_seconds(.0))]
    Throttled(std::time::Duration),
    /// This process is at capacity for the work asked: retry shortly.
    #[error("{0}")]
    Busy(&'static str),
}

/// A wait in seconds, rounded up: a client retrying then is not early.
fn whole_seconds(wait: &std::time::Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

impl ServiceError {
    /// The HTTP status and the short code the REST API answers with.
    pub fn parts(&self) -> (http::StatusCode, &'static str) {
        use http::StatusCode;
        match self {
            ServiceError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ServiceError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ServiceError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ServiceError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ServiceError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ServiceError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ServiceError::Throttled(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ServiceError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        }
    }

    /// Seconds a client should wait before trying again, when it should.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ServiceError::Throttled(wait) => Some(whole_seconds(wait)),
            ServiceError::Busy(_) => Some(1),
            _ => None,
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ServiceError::NotFound("not found"),
            StoreError::Conflict(m) => ServiceError::Conflict(m),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// Who is acting.
#[derive(Debug, Clone)]
pub enum Actor {
    /// A signed-in user, as the store holds them now.
    User(User),
    /// The control plane's own principal (the management token, the
    /// start-up file): an admin that is no row in `users`.
    Service(String),
}

impl Actor {
    /// The control plane's own principal, by what it is.
    pub fn service(name: &str) -> Actor {
        Actor::Service(name.to_string())
    }

    /// The user acting, if a user is.
    pub fn user_id(&self) -> Option<i64> {
        match self {
            Actor::User(u) => Some(u.id),
            Actor::Service(_) => None,
        }
    }

    /// A username, or what the service principal is.
    pub fn name(&self) -> &str {
        match self {
            Actor::User(u) => &u.username,
            Actor::Service(name) => name,
        }
    }

    pub fn is_admin(&self) -> bool {
        match self {
            Actor::User(u) => u.role == Role::Admin,
            Actor::Service(_) => true,
        }
    }

    pub fn require_admin(&self) -> ServiceResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ServiceError::Forbidden("admin role required"))
        }
    }

    /// Whose things a listing shows: the user asked for (or everyone's) for
    /// an admin, always the caller's own for a user.
    pub fn listing_scope(&self, asked: Option<i64>) -> Option<i64> {
        if self.is_admin() {
            asked
        } else {
            self.user_id()
        }
    }

    /// Admins may act on anyone; users only on themselves.
    pub fn require_self_or_admin(&self, user_id: i64) -> ServiceResult<()> {
        if self.is_admin() || self.user_id() == Some(user_id) {
            Ok(())
        } else {
            Err(ServiceError::Forbidden("not allowed for this user"))
        }
    }
}

/// Validates an optional list of model names.
pub(crate) fn check_models(models: &[String]) -> ServiceResult<()> {
    if models.iter().any(|m| m.trim().is_empty() || m.len() > 128) {
        return Err(ServiceError::BadRequest(
            "allowed_models entries must be 1 to 128 characters".into(),
        ));
    }
    Ok(())
}

/// Deserializes a field that may be absent (None), null (Some(None)) or set.
pub(crate) fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    serde::Deserialize::deserialize(d).map(Some)
}
