fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Use a vendored protoc so that a fresh machine needs nothing installed.
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .bytes(".kvtier.v1")
        // Decodes each message from one contiguous buffer (see src/codec.rs).
        .codec_path("crate::codec::FlatProstCodec")
        .compile_protos(
            &[
                "proto/kvtier/v1/cache.proto",
                "proto/kvtier/v1/agent.proto",
                "proto/kvtier/v1/router.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
