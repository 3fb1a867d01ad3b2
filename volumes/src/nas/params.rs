//! What a NAS volume says, read as alibaba-cloud-csi-driver's nasplugin reads it: the PV's
//! `server`, `path` and `vers` attributes (or a StorageClass's `server: host:/path`), and its
//! mount options (`vers=`, `nfsvers=`, `port=`, `mountport=`, `ro`, and the kernel client's
//! tuning options). Checked once, here, so a bad volume fails with the field's name.

use std::collections::HashMap;

use crate::error::Error;

/// Mount options that tune the kernel's NFS client, accepted for it and of no effect on the
/// user-space client (which keeps its own timeouts and sizes).
const TUNING: &[&str] = &[
    "nolock",
    "lock",
    "tcp",
    "proto",
    "noresvport",
    "resvport",
    "hard",
    "soft",
    "intr",
    "nointr",
    "timeo",
    "retrans",
    "rsize",
    "wsize",
    "actimeo",
    "acregmin",
    "acregmax",
    "acdirmin",
    "acdirmax",
    "noac",
    "sync",
    "async",
    "noatime",
    "relatime",
    "nodiratime",
    "rw",
    "sec",
    "lookupcache",
    "nconnect",
];

/// Where a NAS volume is and how it is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub host: String,
    /// The path on the server (`/`, `/share`, `/share/claims/pvc-…`).
    pub path: String,
    /// `3`, `4.0`, `4.1`…
    pub vers: String,
    pub nfs_port: Option<u16>,
    pub mount_port: Option<u16>,
    pub read_only: bool,
    /// The options as given (for the kernel's client).
    pub options: Vec<String>,
}

impl Volume {
    /// NFSv3, which the user-space client speaks.
    pub fn is_v3(&self) -> bool {
        self.vers == "3"
    }
}

/// `server` as nasplugin takes it: a host, or `host:/path` (a StorageClass's form).
fn split_server(server: &str) -> Result<(String, Option<String>), Error> {
    let (host, path) = match server.split_once(":/") {
        Some((h, p)) => (h.to_string(), Some(format!("/{p}"))),
        None => (server.to_string(), None),
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']'));
    if !ok {
        return Err(Error::invalid(
            "server",
            format!("{server:?} is not a host name or address"),
        ));
    }
    Ok((host, path))
}

/// A server path: absolute, no empty, `.` or `..` segments; `/` alone is the root.
pub fn clean_path(field: &'static str, p: &str) -> Result<String, Error> {
    if !p.starts_with('/') {
        return Err(Error::invalid(field, format!("{p:?} is not an absolute path")));
    }
    let segs: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    if segs.iter().any(|s| *s == "." || *s == "..") {
        return Err(Error::invalid(field, format!("{p:?} has a '.' or '..' segment")));
    }
    Ok(format!("/{}", segs.join("/")))
}

fn port(key: &str, v: &str) -> Result<u16, Error> {
    v.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Error::invalid("mountOptions", format!("{key}={v:?} is not a port")))
}

/// Read a volume: its attributes, its mount options (the PV's `mountOptions`, each of which may
/// hold several comma-separated ones), and whether the publish asks for read-only.
pub fn volume(attrs: &HashMap<String, String>, mount_flags: &[String], read_only: bool) -> Result<Volume, Error> {
    let server = attrs.get("server").map(String::as_str).unwrap_or("");
    if server.is_empty() {
        return Err(Error::Missing("server"));
    }
    let (host, server_path) = split_server(server)?;
    let path = match (attrs.get("path").filter(|p| !p.is_empty()), server_path) {
        (Some(p), _) => clean_path("path", p)?,
        (None, Some(p)) => clean_path("server", &p)?,
        (None, None) => "/".to_string(),
    };
    let mut v = Volume {
        host,
        path,
        vers: attrs.get("vers").cloned().unwrap_or_else(|| "3".into()),
        nfs_port: None,
        mount_port: None,
        read_only,
        options: Vec::new(),
    };
    // A server on other ports than NFS's own: `port`/`mountport` as attributes too (this
    // driver's addition: a CSI caller that passes no mount options can still say them).
    if let Some(p) = attrs.get("port").filter(|p| !p.is_empty()) {
        v.nfs_port = Some(port("port", p)?);
    }
    if let Some(p) = attrs.get("mountport").filter(|p| !p.is_empty()) {
        v.mount_port = Some(port("mountport", p)?);
    }
    for flag in mount_flags {
        for o in flag.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (k, val) = o.split_once('=').unwrap_or((o, ""));
            match k {
                "vers" | "nfsvers" => v.vers = val.to_string(),
                "port" => v.nfs_port = Some(port(k, val)?),
                "mountport" => v.mount_port = Some(port(k, val)?),
                "ro" => v.read_only = true,
                _ if TUNING.contains(&k) => {}
                _ => {
                    return Err(Error::invalid(
                        "mountOptions",
                        format!("{o:?} is not an NFS mount option this driver knows (see volumes/README.md)"),
                    ));
                }
            }
            v.options.push(o.to_string());
        }
    }
    if !matches!(v.vers.as_str(), "3" | "4" | "4.0" | "4.1" | "4.2") {
        return Err(Error::invalid(
            "vers",
            format!("{:?}: NFS versions are 3, 4.0, 4.1 and 4.2", v.vers),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn nasplugin_volumes_are_read() {
        let v = volume(
            &attrs(&[
                ("server", "0cd8b4a576-g.cn-hangzhou.nas.aliyuncs.com"),
                ("path", "/k8s//data/"),
            ]),
            &["nolock,tcp,noresvport".into(), "vers=3".into()],
            false,
        )
        .unwrap();
        assert_eq!(v.host, "0cd8b4a576-g.cn-hangzhou.nas.aliyuncs.com");
        assert_eq!(v.path, "/k8s/data");
        assert!(v.is_v3());
        let v = volume(
            &attrs(&[("server", "10.0.0.9:/share")]),
            &["port=2049,mountport=20048,ro".into()],
            false,
        )
        .unwrap();
        assert_eq!(
            (v.path.as_str(), v.nfs_port, v.mount_port, v.read_only),
            ("/share", Some(2049), Some(20048), true)
        );
        let v = volume(&attrs(&[("server", "h"), ("vers", "4.0")]), &[], false).unwrap();
        assert!(!v.is_v3());
        let v = volume(
            &attrs(&[("server", "h"), ("port", "3049"), ("mountport", "3049")]),
            &[],
            false,
        )
        .unwrap();
        assert_eq!((v.nfs_port, v.mount_port), (Some(3049), Some(3049)));
    }

    #[test]
    fn bad_volumes_name_their_field() {
        let e = volume(&attrs(&[]), &[], false).unwrap_err();
        assert!(e.to_string().contains("server"), "{e}");
        let e = volume(&attrs(&[("server", "h"), ("path", "rel")]), &[], false).unwrap_err();
        assert!(e.to_string().contains("path"), "{e}");
        let e = volume(&attrs(&[("server", "h"), ("path", "/a/../b")]), &[], false).unwrap_err();
        assert!(e.to_string().contains("path"), "{e}");
        let e = volume(&attrs(&[("server", "h")]), &["port=x".into()], false).unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
        let e = volume(&attrs(&[("server", "h")]), &["frob".into()], false).unwrap_err();
        assert!(e.to_string().contains("frob"), "{e}");
        let e = volume(&attrs(&[("server", "h"), ("vers", "2")]), &[], false).unwrap_err();
        assert!(e.to_string().contains("vers"), "{e}");
        let e = volume(&attrs(&[("server", "a b")]), &[], false).unwrap_err();
        assert!(e.to_string().contains("server"), "{e}");
    }
}
