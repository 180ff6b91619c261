//! Types and helpers both planes share: configuration, domain vocabulary,
//! pricing maths, key hashing, the outbound HTTP client, telemetry and shutdown.
#![forbid(unsafe_code)]

pub mod billing;
pub mod config;
pub mod domain;
pub mod fs;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod money;
pub mod names;
pub mod net;
pub mod pricing;
pub mod ratelimit;
pub mod serve;
pub mod shutdown;
pub mod state;
pub mod sync;
pub mod telemetry;
