//! Compiles `hutch/v1/*.proto` with protox (pure Rust: no system `protoc`) and generates
//! prost types plus tonic clients and servers; writes the file-descriptor set that the
//! servers' reflection service embeds.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "hutch/v1/types.proto",
        "hutch/v1/agent.proto",
        "hutch/v1/controller.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("hutch_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // A watch event holds a container or a service: the service boxed keeps events
        // (and the store's writes that carry them) as small as before.
        .boxed(".hutch.v1.WatchEvent.service")
        .compile_fds(fds.clone())?;

    // The controller's server once more, with its watch events sent as bytes encoded once
    // (`hutch_proto::wire`): every other type is the one generated above.
    let wire = out.join("wire");
    std::fs::create_dir_all(&wire)?;
    let mut controller_only = fds;
    for file in &mut controller_only.file {
        file.service.retain(|s| {
            file.name == Some("hutch/v1/controller.proto".into()) && s.name() == "Controller"
        });
    }
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(&wire)
        .extern_path(".hutch.v1", "crate::v1")
        .extern_path(".hutch.v1.WatchEvent", "crate::wire::PreEncoded")
        .compile_fds(controller_only)?;
    Ok(())
}
