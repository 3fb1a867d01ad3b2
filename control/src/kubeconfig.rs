//! The kubeconfig file `nodeless up` writes.

use base64::Engine;

pub fn render(server: &str, ca_pem: &str, token: &str, user: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: nodeless
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: nodeless
  context:
    cluster: nodeless
    user: {user}
    namespace: default
current-context: nodeless
"
    )
}
