//! Generates the gRPC code of the Terraform plugin protocol 6, go-plugin's services and the gRPC
//! health service with a vendored `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/tfplugin6.proto", "proto/plugin.proto", "proto/health.proto"];
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let well_known = protoc_bin_vendored::include_path()?;
    let well_known = well_known.to_str().ok_or("protoc include path is not UTF-8")?;
    tonic_prost_build::configure().build_client(false).compile_with_config(
        config,
        &protos,
        &["proto", well_known],
    )?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
