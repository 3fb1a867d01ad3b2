//! A stand-in for a virtual node, for control-plane tests before sandbox-node runs real pods:
//! it registers a Ready Node and reports every pod bound to it Running and Ready with an IP,
//! and finishes graceful deletions. Nothing runs; only the API traffic of a kubelet is real.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

pub struct FakeKubelet {
    task: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<()>,
}

/// A minimal kubelet API on loopback: `GET /containerLogs/<ns>/<pod>/<container>` answers with
/// one line naming what was asked for, so tests can see `kubectl logs` travel through control.
async fn serve_logs(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let Ok(n) = sock.read(&mut buf).await else { return };
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, body) = match path.strip_prefix("/containerLogs/") {
                Some(rest) => (
                    "200 OK",
                    format!("log of {}\n", rest.split('?').next().unwrap_or_default()),
                ),
                None => ("404 Not Found", "not found\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

impl FakeKubelet {
    pub async fn start(client: kube::Client, node: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let server = tokio::spawn(serve_logs(listener));
        let nodes: Api<Node> = Api::all(client.clone());
        let obj: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node, "labels": {"type": "virtual-kubelet", "kubernetes.io/hostname": node},
                "annotations": {"nodeless.io/kubelet-scheme": "http"}},
            "spec": {"taints": []},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test node"}],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                "capacity": {"cpu": "1000", "memory": "4Ti", "pods": "10000"},
                "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": "10000"},
                "nodeInfo": {"kubeletVersion": "v1.33.0-test", "osImage": "test", "kernelVersion": "test",
                    "containerRuntimeVersion": "test://0", "architecture": "amd64", "operatingSystem": "linux",
                    "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": ""}
            }
        }))?;
        match nodes.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        // Status is ignored on create for kinds with a status subresource elsewhere; set it explicitly.
        let status = json!({"status": obj.status});
        nodes
            .patch_status(node, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        let node = node.to_string();
        let task = tokio::spawn(async move {
            let pods: Api<Pod> = Api::all(client.clone());
            let mut next_ip = 2u32;
            loop {
                let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
                if let Ok(list) = pods.list(&lp).await {
                    for p in list.items {
                        let ns = p.metadata.namespace.clone().unwrap_or_default();
                        let name = p.metadata.name.clone().unwrap_or_default();
                        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                        if p.metadata.deletion_timestamp.is_some() {
                            let _ = api
                                .delete(
                                    &name,
                                    &DeleteParams {
                                        grace_period_seconds: Some(0),
                                        ..Default::default()
                                    },
                                )
                                .await;
                            continue;
                        }
                        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                        if running {
                            continue;
                        }
                        next_ip += 1;
                        let ip = format!("10.244.{}.{}", next_ip / 250, next_ip % 250 + 1);
                        let now = chrono_now();
                        let statuses: Vec<_> = p
                            .spec
                            .as_ref()
                            .map(|s| {
                                s.containers
                                    .iter()
                                    .map(|c| {
                                        json!({"name": c.name, "image": c.image, "imageID": "", "ready": true,
                                "restartCount": 0, "started": true, "state": {"running": {"startedAt": now}}})
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        let status = json!({"status": {
                            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1", "startTime": now,
                            "conditions": [
                                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                            ],
                            "containerStatuses": statuses,
                        }});
                        let _ = api
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(Self { task, server })
    }
}

fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.task.abort();
        self.server.abort();
    }
}
