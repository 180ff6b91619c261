//! Compiles the .proto contract with a vendored protoc, so no system install is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["aiproxy/v1/node.proto", "aiproxy/v1/manage.proto"],
        &["."],
    )?;
    println!("cargo:rerun-if-changed=aiproxy/v1/node.proto");
    println!("cargo:rerun-if-changed=aiproxy/v1/manage.proto");
    Ok(())
}
