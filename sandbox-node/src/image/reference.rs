//! Image references as Docker and Kubernetes read them: `busybox` is
//! `docker.io/library/busybox:latest`; a digest pins a reference.

/// The canonical form of a reference: registry, repository, and a `:tag` or `@digest`.
pub fn normalize(reference: &str) -> String {
    let reference = reference.trim();
    let (name, suffix) = match reference.split_once('@') {
        Some((n, d)) => (n, format!("@{d}")),
        None => {
            let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
            match reference[last_slash..].rfind(':') {
                Some(i) => (&reference[..last_slash + i], reference[last_slash + i..].to_string()),
                None => (reference, ":latest".to_string()),
            }
        }
    };
    let first = name.split('/').next().unwrap_or_default();
    let has_registry = name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_registry {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    format!("{full}{suffix}")
}

/// A short form for listings: `docker.io/library/` dropped.
pub fn short(reference: &str) -> &str {
    reference
        .strip_prefix("docker.io/library/")
        .or_else(|| reference.strip_prefix("docker.io/"))
        .unwrap_or(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_like_docker() {
        assert_eq!(normalize("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalize("me/app"), "docker.io/me/app:latest");
        assert_eq!(normalize("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(normalize("registry.example.com/a/b:v1"), "registry.example.com/a/b:v1");
        assert_eq!(
            normalize("nodeless.local/echo@sha256:abc"),
            "nodeless.local/echo@sha256:abc"
        );
        assert_eq!(short("docker.io/library/busybox:latest"), "busybox:latest");
    }
}
