//! `nodeless-guest-agent`: PID 1 of a microVM pod. Started by the kernel from the initramfs the
//! node built, it mounts the kernel file systems, loads the modules it was given, and serves
//! the node over the virtio-serial port `agent`. Run again by itself as `container-init` and
//! `container-enter`, it sets up one container process and execs it.

mod agent;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agent::{containers::Containers, init, port, service::Service, setup};
use nodeless_guest_agent::PORT_NAME;
use nodeless_guest_agent::proto::agent_server::AgentServer;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match (args.get(1).map(String::as_str), args.len()) {
        (Some("container-init"), 3) => std::process::exit(setup::container_init(Path::new(&args[2]))),
        (Some("container-enter"), n) if n >= 5 => {
            std::process::exit(setup::container_enter(&args[2], Path::new(&args[3]), &args[4..]))
        }
        _ => {}
    }
    if std::process::id() != 1 {
        eprintln!("nodeless-guest-agent is a microVM's init (PID 1); the node puts it in the VM's initramfs");
        std::process::exit(2);
    }
    let init_uptime = init::start_uptime();
    println!("nodeless-guest-agent: user space at {init_uptime:.3}s");
    if let Err(e) = serve(init_uptime) {
        eprintln!("nodeless-guest-agent: {e}");
    }
    init::power_off();
}

fn serve(init_uptime: f64) -> Result<(), String> {
    init::boot()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let containers = Containers::start();
    let path = port::find(PORT_NAME, Duration::from_secs(30))?;
    let sessions = port::sessions(&path, rt.handle().clone())?;
    let serving_uptime = init::uptime();
    println!(
        "nodeless-guest-agent: serving on {} at {serving_uptime:.3}s",
        path.display()
    );
    let service = Service {
        containers: Arc::clone(&containers),
        init_uptime,
        serving_uptime,
    };
    rt.block_on(async move {
        tonic::transport::Server::builder()
            .add_service(AgentServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(sessions))
            .await
            .map_err(|e| e.to_string())
    })
}
