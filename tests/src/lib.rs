//! Test support for aiproxy: a mock upstream, a process harness for the
//! real binary, and a small HTTP client.
#![forbid(unsafe_code)]

pub mod client;
pub mod harness;
pub mod mock;
pub mod proxies;
