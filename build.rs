//! Generates the CSI gRPC code from proto/csi.proto without protoc: protox
//! parses the file (it bundles the google/protobuf well-known imports) and
//! tonic-prost-build turns the descriptor set into Rust.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    let fds = protox::compile(["csi.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
