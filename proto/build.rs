//! Generates the gRPC code from `keylime/*/v1/*.proto` with a vendored `protoc`, so a fresh
//! machine needs no protobuf compiler installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "keylime/registrar/v1/registrar.proto",
        "keylime/verifier/v1/verifier.proto",
        "keylime/agent/v1/agent.proto",
    ];
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // The descriptor set, with the proto comments (source info), feeds server reflection and
    // the generated API reference (docs/api.md).
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    config.file_descriptor_set_path(out_dir.join("keylime_v1_descriptor.bin"));
    let well_known = protoc_bin_vendored::include_path()?;
    let well_known = well_known.to_str().ok_or("protoc include path is not UTF-8")?;
    tonic_prost_build::configure().compile_with_config(config, &protos, &[".", well_known])?;
    println!("cargo:rerun-if-changed=build.rs");
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
