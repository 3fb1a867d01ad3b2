//! Generates the CSI messages, servers and clients (package `csi.v1`) from the vendored
//! `proto/csi.proto` with protox, a protobuf compiler in Rust, so a fresh machine needs no
//! `protoc`. Every RPC gets a default "unimplemented" body: a driver writes only what it serves,
//! as Go drivers embed `Unimplemented*Server`.

fn main() -> anyhow::Result<()> {
    let proto = "proto/csi.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
