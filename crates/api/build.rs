//! Compiles proto/*.proto (package docker.swarmkit.v1, and this implementation's raft transport,
//! swarmkit.raftrpc.v1, and its data plane's control channel, swarmkit.netplane.v1) with prost and
//! tonic.
//! protoc comes from protoc-bin-vendored unless PROTOC names another one.

use std::path::PathBuf;

const FILES: &[&str] = &[
    "types.proto",
    "specs.proto",
    "objects.proto",
    "control.proto",
    "ca.proto",
    "dispatcher.proto",
    "health.proto",
    "watch.proto",
    "logbroker.proto",
    "raft.proto",
    "resource.proto",
    "snapshot.proto",
    "raftrpc.proto",
    "netplane.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let mut config = tonic_prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    // Maps become BTreeMaps so that labels and options iterate in a stable order.
    config.btree_map(["."]);
    // The store keeps every version of an object as an `Arc<Object>`: unboxed, each `Object` is
    // as large as its largest variant (Service, 3.4 KiB), so a stored Task (2 KiB) or Secret
    // (0.3 KiB) would carry that size. Boxed, each version is only as large as its own kind.
    config.boxed(".docker.swarmkit.v1.Object.Object");
    // A TaskSpec holds its runtime inline: the container variant (0.9 KiB) made every Task 2 KiB
    // and every Service 3.4 KiB even when the runtime is unset or small. The other fields below
    // are often unset and together another 0.4 KiB. Boxed, a Task is 0.75 KiB, which is less
    // memory to clear and copy for every task version the store keeps.
    config.boxed(".docker.swarmkit.v1.TaskSpec.runtime.container");
    for field in [
        ".docker.swarmkit.v1.Task.endpoint",
        ".docker.swarmkit.v1.Task.log_driver",
        ".docker.swarmkit.v1.TaskSpec.resources",
        ".docker.swarmkit.v1.TaskSpec.placement",
        ".docker.swarmkit.v1.TaskSpec.restart",
        ".docker.swarmkit.v1.TaskSpec.log_driver",
    ] {
        config.boxed(field);
    }
    // Key material must not reach a log through `{:?}`: lib.rs gives EncryptionKey (network
    // bootstrap and unlock keys) a Debug that leaves the key bytes out.
    config.skip_debug([".docker.swarmkit.v1.EncryptionKey"]);
    let wkt = protoc_bin_vendored::include_path()?;
    let files: Vec<PathBuf> = FILES.iter().map(|f| root.join(f)).collect();
    // Our codec: tonic-prost's with smaller first buffers (src/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::codec::ProtoCodec")
        .compile_with_config(config, &files, &[root.clone(), wkt])?;
    println!("cargo:rerun-if-changed={}", root.display());
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
