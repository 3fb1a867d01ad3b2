//! The seam to pod networking. `Cni` runs CNI plugins exactly as containerd or podman do
//! (environment + network config on stdin, spec 1.x results), so `eni-cni` plugs in as a
//! conflist; `LoopbackOnly` leaves the pod with `lo` alone.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("reading the network config {path}: {message}")]
    Config { path: String, message: String },
    #[error("CNI plugin {plugin} {command}: {message}")]
    Plugin {
        plugin: String,
        command: String,
        message: String,
    },
}

#[async_trait]
pub trait Network: Send + Sync {
    /// Give the pod its interfaces; the pod's IP, if it gets one.
    async fn attach(&self, id: &str, pod: &Pod, netns: &Path) -> Result<String, NetworkError>;
    /// Undo `attach`; succeeds when there is nothing left to undo.
    async fn detach(&self, id: &str, netns: &Path) -> Result<(), NetworkError>;
}

pub struct LoopbackOnly;

#[async_trait]
impl Network for LoopbackOnly {
    async fn attach(&self, _: &str, _: &Pod, _: &Path) -> Result<String, NetworkError> {
        Ok(String::new())
    }
    async fn detach(&self, _: &str, _: &Path) -> Result<(), NetworkError> {
        Ok(())
    }
}

pub struct Cni {
    conflist: Value,
    bin_dirs: Vec<PathBuf>,
    cache_dir: PathBuf,
}

impl Cni {
    pub fn load(conflist: &Path, bin_dirs: Vec<PathBuf>, cache_dir: PathBuf) -> Result<Self, NetworkError> {
        let err = |message: String| NetworkError::Config {
            path: conflist.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(conflist).map_err(|e| err(e.to_string()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if v["plugins"].as_array().is_none_or(|p| p.is_empty()) || v["name"].as_str().is_none() {
            return Err(err("a conflist needs a name and at least one plugin".into()));
        }
        std::fs::create_dir_all(&cache_dir).map_err(|e| err(e.to_string()))?;
        Ok(Self {
            conflist: v,
            bin_dirs,
            cache_dir,
        })
    }

    async fn invoke(
        &self,
        command: &str,
        id: &str,
        netns: &Path,
        plugin: &Value,
        prev: Option<&Value>,
        args: &str,
    ) -> Result<Value, NetworkError> {
        let kind = plugin["type"].as_str().unwrap_or_default().to_string();
        let perr = |message: String| NetworkError::Plugin {
            plugin: kind.clone(),
            command: command.to_string(),
            message,
        };
        let bin = self
            .bin_dirs
            .iter()
            .map(|d| d.join(&kind))
            .find(|p| p.exists())
            .ok_or_else(|| perr("plugin binary not found in the CNI path".into()))?;
        let mut conf = plugin.clone();
        conf["name"] = self.conflist["name"].clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let path = std::env::join_paths(&self.bin_dirs).map_err(|e| perr(e.to_string()))?;
        let mut child = tokio::process::Command::new(&bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", path)
            .env("CNI_ARGS", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| perr(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(conf.to_string().as_bytes())
                .await
                .map_err(|e| perr(e.to_string()))?;
        }
        let out = child.wait_with_output().await.map_err(|e| perr(e.to_string()))?;
        let body: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            let msg = body["msg"]
                .as_str()
                .map(|m| format!("{m} {}", body["details"].as_str().unwrap_or_default()))
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).to_string());
            return Err(perr(format!("code {}: {}", body["code"], msg.trim())));
        }
        Ok(body)
    }

    fn cache(&self, id: &str) -> PathBuf {
        self.cache_dir.join(format!("{id}.json"))
    }
}

#[async_trait]
impl Network for Cni {
    async fn attach(&self, id: &str, pod: &Pod, netns: &Path) -> Result<String, NetworkError> {
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID={id}",
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default()
        );
        let mut prev: Option<Value> = None;
        for plugin in self.conflist["plugins"].as_array().into_iter().flatten() {
            match self.invoke("ADD", id, netns, plugin, prev.as_ref(), &args).await {
                Ok(r) => prev = Some(r),
                Err(e) => {
                    let _ = self.detach(id, netns).await;
                    return Err(e);
                }
            }
        }
        let result = prev.unwrap_or(Value::Null);
        let _ = std::fs::write(self.cache(id), json!({"result": result, "args": args}).to_string());
        let ip = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["address"].as_str())
            .next()
            .unwrap_or_default();
        Ok(ip.split('/').next().unwrap_or_default().to_string())
    }

    async fn detach(&self, id: &str, netns: &Path) -> Result<(), NetworkError> {
        let cached: Value = std::fs::read(self.cache(id))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let args = cached["args"].as_str().unwrap_or("IgnoreUnknown=1").to_string();
        let prev = cached.get("result").filter(|r| !r.is_null());
        let mut first_err = None;
        for plugin in self.conflist["plugins"].as_array().into_iter().flatten().rev() {
            if let Err(e) = self.invoke("DEL", id, netns, plugin, prev, &args).await {
                first_err.get_or_insert(e);
            }
        }
        let _ = std::fs::remove_file(self.cache(id));
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
