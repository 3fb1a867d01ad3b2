//! The guest's boot image: the node's kernel (Debian's `linux-image-amd64` by default) and an
//! initramfs the node writes once per kernel and agent: the guest agent as `/init` and the
//! kernel modules a microVM needs (virtio-mmio, virtio-serial, virtio-net, 9p, virtio-blk) with
//! their dependencies, in load order. The archive is an uncompressed cpio (newc): under TCG,
//! decompressing it would cost the guest more than reading the larger file.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The modules the guest loads, by name; their dependencies come from `modules.dep`.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_console",
    "virtio_net",
    "9pnet_virtio",
    "9p",
    "virtio_blk",
];

#[derive(Clone, Debug)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub kernel_release: String,
}

/// The release a Debian kernel image is named for (`vmlinuz-6.1.0-57-amd64`).
pub fn release_of(kernel: &Path) -> Option<String> {
    let name = kernel.file_name()?.to_str()?;
    name.strip_prefix("vmlinuz-").map(str::to_string)
}

/// The newest `/boot/vmlinuz-*` with its modules installed.
pub fn default_kernel() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| release_of(p).is_some_and(|r| Path::new("/lib/modules").join(r).join("modules.dep").exists()))
        .collect();
    found.sort();
    found.pop()
}

/// Whether an ELF executable needs a program interpreter (is dynamically linked).
pub fn needs_interpreter(bytes: &[u8]) -> Result<bool, String> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return Err("not a 64-bit ELF executable".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap_or_default()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let Some(p) = bytes.get(at..at + 4) else { break };
        if u32::from_le_bytes([p[0], p[1], p[2], p[3]]) == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The modules to pack for `wanted`, dependencies first, skipping those built into the kernel.
pub fn module_order(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<String>, String> {
    let dep_file = modules_dir.join("modules.dep");
    let deps = std::fs::read_to_string(&dep_file).map_err(|e| format!("{}: {e}", dep_file.display()))?;
    let builtin = std::fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    let name_of = |path: &str| {
        Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.split(".ko").next().unwrap_or(n).replace('-', "_"))
            .unwrap_or_default()
    };
    let table: Vec<(String, String, Vec<String>)> = deps
        .lines()
        .filter_map(|l| {
            let (module, rest) = l.split_once(':')?;
            Some((
                name_of(module),
                module.to_string(),
                rest.split_whitespace().map(str::to_string).collect(),
            ))
        })
        .collect();
    let builtin: BTreeSet<String> = builtin.lines().map(name_of).collect();
    let mut order = Vec::new();
    fn visit(
        path: &str,
        table: &[(String, String, Vec<String>)],
        order: &mut Vec<String>,
        depth: usize,
    ) -> Result<(), String> {
        if order.iter().any(|p| p == path) {
            return Ok(());
        }
        if depth > 32 {
            return Err(format!("modules.dep: a dependency loop at {path}"));
        }
        let entry = table
            .iter()
            .find(|(_, p, _)| p == path)
            .ok_or(format!("modules.dep has no {path}"))?;
        // modules.dep lists what a module needs with the last to load first.
        for d in entry.2.iter().rev() {
            visit(d, table, order, depth + 1)?;
        }
        order.push(path.to_string());
        Ok(())
    }
    for w in wanted {
        let w = w.replace('-', "_");
        match table.iter().find(|(n, _, _)| *n == w) {
            Some((_, path, _)) => visit(path, &table, &mut order, 0)?,
            None if builtin.contains(&w) => {}
            None => {
                return Err(format!(
                    "the guest kernel has no module {w} ({} lists none)",
                    dep_file.display()
                ));
            }
        }
    }
    Ok(order)
}

/// One file of a `newc` cpio archive.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        0,
        0,
        1,
        0,
        data.len(),
        0,
        0,
        0,
        0,
        name.len() + 1,
        0
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Write (once) the initramfs for this kernel and agent under `out_dir`.
pub fn build(kernel: &Path, agent: &Path, out_dir: &Path) -> Result<GuestImage, String> {
    let release = release_of(kernel).ok_or_else(|| {
        format!(
            "{}: the guest kernel must be named vmlinuz-<release>, with its modules in /lib/modules/<release>",
            kernel.display()
        )
    })?;
    let modules_dir = Path::new("/lib/modules").join(&release);
    let agent_bytes = std::fs::read(agent).map_err(|e| format!("the guest agent {}: {e}", agent.display()))?;
    if needs_interpreter(&agent_bytes).map_err(|e| format!("the guest agent {}: {e}", agent.display()))? {
        return Err(format!(
            "the guest agent {} is dynamically linked; the guest has no libraries: build it with `cargo rustc -p nodeless-guest-agent --release -- -C target-feature=+crt-static`",
            agent.display()
        ));
    }
    let order = module_order(&modules_dir, GUEST_MODULES)?;
    let mut hash = Sha256::new();
    hash.update(&agent_bytes);
    hash.update(release.as_bytes());
    for m in &order {
        hash.update(m.as_bytes());
    }
    let name = format!("initramfs-{release}-{}.cpio", &hex::encode(hash.finalize())[..16]);
    let path = out_dir.join(name);
    let image = GuestImage {
        kernel: kernel.to_path_buf(),
        initramfs: path.clone(),
        kernel_release: release,
    };
    if path.exists() {
        return Ok(image);
    }
    let mut out = Vec::with_capacity(agent_bytes.len() + (4 << 20));
    let mut ino = 1;
    let mut add = |out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]| {
        cpio_entry(out, ino, name, mode, data);
        ino += 1;
    };
    for d in ["dev", "proc", "sys", "run", "tmp", "lib", "lib/modules"] {
        add(&mut out, d, 0o040755, b"");
    }
    add(&mut out, "init", 0o100755, &agent_bytes);
    let mut listed = String::new();
    for m in &order {
        let file = modules_dir.join(m);
        let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let base = Path::new(m)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(m)
            .to_string();
        add(&mut out, &format!("lib/modules/{base}"), 0o100644, &bytes);
        listed.push_str(&base);
        listed.push('\n');
    }
    add(&mut out, "lib/modules/order", 0o100644, listed.as_bytes());
    cpio_entry(&mut out, 0, "TRAILER!!!", 0, b"");
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let tmp = path.with_extension("tmp");
    std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&out))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_come_after_what_they_need_and_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("modules.dep"),
            "kernel/a.ko: kernel/c.ko kernel/b.ko\nkernel/b.ko:\nkernel/c.ko: kernel/b.ko\nkernel/d.ko: kernel/b.ko\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("modules.builtin"), "kernel/e.ko\n").unwrap();
        let order = module_order(dir.path(), &["a", "d", "e"]).unwrap();
        assert_eq!(order, ["kernel/b.ko", "kernel/c.ko", "kernel/a.ko", "kernel/d.ko"]);
        let err = module_order(dir.path(), &["zz"]).unwrap_err();
        assert!(err.contains("no module zz"), "{err}");
    }

    #[test]
    fn a_dynamically_linked_agent_is_told_apart() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(needs_interpreter(&me).unwrap(), "the test binary is dynamically linked");
        assert!(needs_interpreter(b"#!/bin/sh\n").is_err());
    }
}
