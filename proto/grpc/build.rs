//! Compiles `strata/v1/strata.proto` with protox (a Rust protobuf compiler), so
//! the build needs no system `protoc`; the encoded descriptor set is kept for the
//! reflection service.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "strata/v1/strata.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("strata_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
