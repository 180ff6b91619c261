//! Generated gRPC types and services of the `aiproxy.v1` package.
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("aiproxy.v1");
}
