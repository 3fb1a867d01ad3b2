//! Serving a driver on a Unix socket and connecting to one, as kubelet and the CSI sidecars do
//! (`unix:///var/lib/kubelet/plugins/<driver>/csi.sock`).
//!
//! The socket is the driver's only door and drivers run as root, so it is made mode 0600: only
//! root (the node, the control plane) may call it. A socket file left by a driver that was
//! killed is removed before binding; any other file in its place is an error, never removed.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;

use crate::csi::controller_server::{Controller, ControllerServer};
use crate::csi::identity_server::{Identity, IdentityServer};
use crate::csi::node_server::{Node, NodeServer};

/// What serving or connecting can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The endpoint is neither `unix:///abs/path` nor a path.
    #[error("endpoint {0:?}: want unix:///path/to/csi.sock or a path")]
    Unsupported(String),
    /// Preparing, binding or securing the socket failed.
    #[error("{call} {}: {source}", path.display())]
    Socket {
        call: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something other than a socket is in the socket's place.
    #[error("{} exists and is not a socket; not removing it", .0.display())]
    NotASocket(PathBuf),
    /// The gRPC transport failed (serving, or connecting to a driver).
    #[error("gRPC transport on {}: {source}", path.display())]
    Transport {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
}

/// The socket path of a CSI endpoint: `unix:///abs/path.sock`, `unix:/abs/path.sock`, or a path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, EndpointError> {
    let path = match endpoint.strip_prefix("unix://") {
        Some(rest) => rest,
        None => endpoint.strip_prefix("unix:").unwrap_or(endpoint),
    };
    // `unix://host/path` has an authority, which a Unix socket has no use for.
    if path.is_empty() || (endpoint.starts_with("unix:") && !path.starts_with('/')) || path.contains("://") {
        return Err(EndpointError::Unsupported(endpoint.to_string()));
    }
    Ok(PathBuf::from(path))
}

fn socket_err(call: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EndpointError + use<> {
    let path = path.to_path_buf();
    move |source| EndpointError::Socket { call, path, source }
}

/// Bind the endpoint's socket (mode 0600), removing a stale socket file first and creating its
/// directory. Binding before serving lets a caller connect as soon as this returns.
pub fn listen(endpoint: &str) -> Result<UnixListener, EndpointError> {
    let path = socket_path(endpoint)?;
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&path).map_err(socket_err("remove", &path))?,
        Ok(_) => return Err(EndpointError::NotASocket(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(socket_err("stat", &path)(e)),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(socket_err("mkdir", dir))?;
    }
    let listener = UnixListener::bind(&path).map_err(socket_err("bind", &path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(socket_err("chmod", &path))?;
    Ok(listener)
}

/// Serve `driver`'s Identity, Controller and Node services on `endpoint` until `shutdown`
/// completes; the socket file is removed afterwards.
pub async fn serve<D>(endpoint: &str, driver: D, shutdown: impl Future<Output = ()>) -> Result<(), EndpointError>
where
    D: Identity + Controller + Node,
{
    let listener = listen(endpoint)?;
    serve_on(listener, driver, shutdown).await
}

/// [`serve`] on a socket bound by [`listen`].
pub async fn serve_on<D>(
    listener: UnixListener,
    driver: D,
    shutdown: impl Future<Output = ()>,
) -> Result<(), EndpointError>
where
    D: Identity + Controller + Node,
{
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
        .unwrap_or_default();
    let driver = Arc::new(driver);
    tracing::info!(socket = %path.display(), "CSI driver serving");
    let served = tonic::transport::Server::builder()
        .add_service(IdentityServer::from_arc(driver.clone()))
        .add_service(ControllerServer::from_arc(driver.clone()))
        .add_service(NodeServer::from_arc(driver))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    if !path.as_os_str().is_empty() {
        let _ = std::fs::remove_file(&path);
    }
    served.map_err(|source| EndpointError::Transport { path, source })
}

/// How long a call to a driver may take before it fails with DEADLINE_EXCEEDED (and is tried
/// again by whoever made it): kubelet's two minutes for a mount, which covers formatting a
/// large disk. A hung driver holds a caller no longer than this.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A gRPC channel to the driver at `endpoint` (a Unix socket), connected now; make the
/// generated clients over it (`csi::node_client::NodeClient::new(channel)`).
pub async fn connect(endpoint: &str) -> Result<tonic::transport::Channel, EndpointError> {
    let path = socket_path(endpoint)?;
    let target = path.clone();
    // The URI only satisfies the HTTP/2 layer (it becomes :authority); the connector below
    // ignores it and dials the socket.
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let target = target.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(target).await?)) }
        }))
        .await
        .map_err(|source| EndpointError::Transport { path, source })
}

#[cfg(test)]
mod tests {
    use super::socket_path;
    use std::path::PathBuf;

    #[test]
    fn endpoints_name_a_socket_path() {
        let p = |s: &str| socket_path(s).ok();
        assert_eq!(
            p("unix:///run/csi/disk.sock"),
            Some(PathBuf::from("/run/csi/disk.sock"))
        );
        assert_eq!(p("unix:/run/csi/disk.sock"), Some(PathBuf::from("/run/csi/disk.sock")));
        assert_eq!(p("/run/csi/disk.sock"), Some(PathBuf::from("/run/csi/disk.sock")));
        assert_eq!(p("csi.sock"), Some(PathBuf::from("csi.sock")));
        assert_eq!(p("unix://host/csi.sock"), None, "an authority");
        assert_eq!(p("tcp://127.0.0.1:10000"), None);
        assert_eq!(p("unix://"), None);
        assert_eq!(p(""), None);
    }
}
