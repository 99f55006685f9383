//! Generates the jitsudo.v1 tonic/prost code, its proto3-JSON serde impls (pbjson), and the
//! descriptor set (for gRPC reflection and the v1 compatibility test). protoc is vendored.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Credentials carry live secrets: their Debug is written by hand and redacts values.
    config.skip_debug([".jitsudo.v1.Credentials"]);
    let include = protoc_bin_vendored::include_path()?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor = out.join("jitsudo_v1_descriptor.bin");
    let protos = ["requests", "policy", "audit", "principals", "admin"]
        .map(|p| PathBuf::from(format!("jitsudo/v1/{p}.proto")));
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_with_config(config, &protos, &[PathBuf::from("."), include])?;
    let set = std::fs::read(&descriptor)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .build(&[".jitsudo"])?;
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    Ok(())
}
