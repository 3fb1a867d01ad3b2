//! Generates the agent protocol (package `nodeless.agent.v1`) from `proto/agent.proto` with
//! protox, so no `protoc` is needed: the agent serves it, the node calls it.

fn main() -> anyhow::Result<()> {
    let proto = "proto/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
