//! Test support for aiproxy: a mock upstream, a process harness for the
//! real binary, and a small HTTP client.
#![forbid(unsafe_code)]
// Test support: a failed unwrap is a failed test, and the mock's tasks die
// with the test's runtime.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

pub mod client;
pub mod harness;
pub mod mock;
pub mod otlp;
pub mod prometheus;
pub mod proxies;
