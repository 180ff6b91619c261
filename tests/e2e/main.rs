//! End-to-end suites: the real `aiproxy` binary against the mock upstream.
mod billing;
mod console;
mod embedded;
mod hardening;
mod limits;
mod loss;
mod multinode;
mod oauth;
mod operations;
mod platforms;
mod scheduling;
mod sdk;
mod split;

use std::path::PathBuf;

/// The binary cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_aiproxy"))
}
