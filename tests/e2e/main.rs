//! End-to-end suites: the real `aiproxy` binary against the mock upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]
mod billing;
mod console;
mod contract;
mod embedded;
mod hardening;
mod limits;
mod loss;
mod managed_stores;
mod multinode;
mod oauth;
mod observability;
mod operations;
mod platforms;
mod python;
mod scheduling;
mod sdk;
mod split;

use std::path::PathBuf;

/// The binary cargo built for these tests, or the one `AIPROXY_TEST_BIN`
/// names (to show that a test fails on another build).
pub fn bin() -> PathBuf {
    std::env::var_os("AIPROXY_TEST_BIN")
        .filter(|p| !p.is_empty())
        .map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_aiproxy")),
            PathBuf::from,
        )
}
