//! Runs the mock upstream on its own, for trying aiproxy by hand:
//! `cargo run -p aiproxy-tests --bin mock-upstream` prints the URL to use as an account's base_url.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]
#[tokio::main]
async fn main() {
    let mock = aiproxy_tests::mock::MockUpstream::start().await;
    println!("mock upstream listening on {}", mock.url());
    let _ = tokio::signal::ctrl_c().await;
}
