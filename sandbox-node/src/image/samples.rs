//! The sample images, built hermetically from what is on the machine: `busybox` from Debian's
//! busybox-static, and `echo` from the workspace's `echo-server` (an HTTP, UDP and websocket
//! echo server, with the C library it links), each written as an OCI image layout that
//! `nodeless image import` reads. `nodeless up` imports them into a new node (so that
//! `examples/` runs with no registry), and the tests run on them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::image::layout;
use anyhow::{Context, Result, bail};
use serde_json::json;
use sha2::{Digest, Sha256};

pub const BUSYBOX: &str = "nodeless.local/busybox:1";
pub const ECHO: &str = "nodeless.local/echo:1";

enum Entry {
    Dir(&'static str, u32),
    File(String, Vec<u8>, u32),
    Symlink(String, String),
}

fn layer(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            Entry::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty())?;
            }
            Entry::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, data.as_slice())?;
            }
            Entry::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target)?;
            }
        }
    }
    Ok(b.into_inner()?)
}

/// Write an OCI image layout with one gzip layer.
fn write_layout(dir: &Path, reference: &str, tar_bytes: &[u8], entrypoint: &[&str], cmd: &[&str]) -> Result<PathBuf> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(tar_bytes)?;
    let gz = gz.finish()?;
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Entrypoint": entrypoint, "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex::encode(Sha256::digest(tar_bytes)))]}
    });
    layout::write(
        dir,
        reference,
        &serde_json::to_vec(&config)?,
        &[("application/vnd.oci.image.layer.v1.tar+gzip", &gz)],
    )?;
    Ok(dir.to_path_buf())
}

fn base_entries() -> Vec<Entry> {
    vec![
        Entry::Dir("bin", 0o755),
        Entry::Dir("etc", 0o755),
        Entry::Dir("tmp", 0o1777),
        Entry::Dir("root", 0o700),
        Entry::Dir("proc", 0o555),
        Entry::Dir("sys", 0o555),
        Entry::Dir("dev", 0o755),
        Entry::Dir("home", 0o755),
        Entry::File(
            "etc/passwd".into(),
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n".to_vec(),
            0o644,
        ),
        Entry::File("etc/group".into(), b"root:x:0:\nnogroup:x:65534:\n".to_vec(), 0o644),
    ]
}

/// busybox from Debian's busybox-static, with a symlink per applet.
pub fn busybox_layout(dir: &Path) -> Result<PathBuf> {
    let bin = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("busybox-static is not installed")?;
    let list = Command::new(&bin).arg("--list").output()?;
    let mut entries = base_entries();
    entries.push(Entry::File("bin/busybox".into(), std::fs::read(&bin)?, 0o755));
    for applet in String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        entries.push(Entry::Symlink(format!("bin/{applet}"), "busybox".into()));
    }
    write_layout(dir, BUSYBOX, &layer(&entries)?, &[], &["sh"])
}

/// The echo server and the shared libraries it links, at their host paths.
pub fn echo_layout(dir: &Path, echo_bin: &Path) -> Result<PathBuf> {
    binary_layout(dir, ECHO, echo_bin, "echo-server")
}

/// An image of one host program at `/<name>` and the shared libraries it links, at their host
/// paths (a benchmark's tool: fio), with busybox's base files.
pub fn binary_layout(dir: &Path, reference: &str, bin: &Path, name: &str) -> Result<PathBuf> {
    let ldd = Command::new("ldd").arg(bin).output().context("running ldd")?;
    let mut entries = base_entries();
    entries.push(Entry::Dir("lib", 0o755));
    entries.push(Entry::Dir("lib64", 0o755));
    entries.push(Entry::Dir("usr", 0o755));
    entries.push(Entry::Dir("usr/lib", 0o755));
    entries.push(Entry::Dir("usr/lib/x86_64-linux-gnu", 0o755));
    entries.push(Entry::Dir("lib/x86_64-linux-gnu", 0o755));
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line.split_whitespace().find(|w| w.starts_with('/'));
        let Some(path) = path else { continue };
        let real = std::fs::canonicalize(path)?;
        entries.push(Entry::File(
            path.trim_start_matches('/').to_string(),
            std::fs::read(&real)?,
            0o755,
        ));
    }
    if !entries
        .iter()
        .any(|e| matches!(e, Entry::File(p, _, _) if p.contains("ld-linux")))
    {
        bail!("ldd named no dynamic loader for {}", bin.display());
    }
    entries.push(Entry::File(name.into(), std::fs::read(bin)?, 0o755));
    write_layout(dir, reference, &layer(&entries)?, &[&format!("/{name}")], &[])
}
