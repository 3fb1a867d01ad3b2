//! The NAS driver's user-space NFSv3 client (the FUSE mount it makes where the kernel has no
//! NFS client) beside libnfs's `nfs-cp`/`nfs-ls` (Debian's libnfs-utils), in one run, against
//! one export (this crate's `nfs-server` on loopback, over a directory on disk). Needs root.
//!
//! 1. sequential write of one file: 1 MiB writes through the mount (close included: it waits
//!    for the writes and COMMITs) / `nfs-cp` of a local file of the same size;
//! 2. sequential read of it, page caches dropped: through the mount (after a fresh mount) /
//!    `nfs-cp` to a local file;
//! 3. metadata: create N small files through the mount (open, write 100 bytes, close) / `nfs-cp`
//!    of a 100-byte file N times (a process, and its MOUNT, per file: how scripts use it);
//!    stat the N files through a fresh mount; list the directory through a fresh mount /
//!    `nfs-ls` of it.
//!
//! `nas-bench [--size-mib 1024] [--files 2000]`; it prints a table with the ratios.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use nodeless_tests::fuse_bench::{drop_caches, fuse_mount, unmount};
use nodeless_tests::nfs::NfsServer;

struct Args {
    size_mib: u64,
    files: usize,
}

fn args() -> Args {
    let mut a = Args {
        size_mib: 1024,
        files: 2000,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for w in argv.windows(2) {
        match w[0].as_str() {
            "--size-mib" => a.size_mib = w[1].parse().unwrap_or(a.size_mib),
            "--files" => a.files = w[1].parse().unwrap_or(a.files),
            _ => {}
        }
    }
    a
}

/// Our mount of `/export/ours`.
struct Ours {
    config: PathBuf,
    at: PathBuf,
}

impl Ours {
    fn mount(&self) -> Result<()> {
        fuse_mount(&self.config, &self.at)
    }

    fn unmount(&self) -> Result<()> {
        unmount(&self.at)
    }

    fn remount(&self) -> Result<()> {
        self.unmount()?;
        drop_caches();
        self.mount()
    }
}

fn url(nfs: &NfsServer, path: &str) -> String {
    format!(
        "nfs://127.0.0.1{}/{path}?nfsport={p}&mountport={p}",
        nfs.export,
        p = nfs.port
    )
}

fn nfs_cp(from: &str, to: &str) -> Result<()> {
    let out = Command::new("nfs-cp")
        .args([from, to])
        .output()
        .context("nfs-cp (apt-get install libnfs-utils)")?;
    if !out.status.success() {
        bail!("nfs-cp {from} {to}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn fill(block: &mut [u8], x: &mut u64) {
    for chunk in block.chunks_mut(8) {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

struct Row {
    what: String,
    unit: &'static str,
    ours: f64,
    peer: f64,
    peer_name: &'static str,
}

fn main() -> Result<()> {
    let a = args();
    let nfs = NfsServer::start()?;
    for d in ["ours", "peer", "peer/small"] {
        std::fs::create_dir_all(nfs.root.path().join(d))?;
    }
    let work = tempfile::Builder::new().prefix("nas-bench-").tempdir()?;
    let at = work.path().join("mnt");
    std::fs::create_dir_all(&at)?;
    let config = serde_json::json!({
        "kind": nodeless_volumes::nas::KIND,
        "host": "127.0.0.1", "path": format!("{}/ours", nfs.export),
        "nfs_port": nfs.port, "mount_port": nfs.port, "read_only": false,
        "mountpoint": at, "stats_file": work.path().join("stats.json"),
    });
    let config_path = work.path().join("config.json");
    std::fs::write(&config_path, serde_json::to_vec(&config)?)?;
    let ours = Ours {
        config: config_path,
        at: at.clone(),
    };
    ours.mount()?;
    let r = run(&a, &nfs, &ours, work.path());
    let _ = ours.unmount();
    let rows = r?;
    println!("\nNAS user-space NFSv3 client (FUSE) vs libnfs utilities, one nfs-server export on loopback\n");
    println!("| work | unit | ours | peer | ours / peer |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} | {:.1} ({}) | ×{:.2} |",
            r.what,
            r.unit,
            r.ours,
            r.peer,
            r.peer_name,
            r.ours / r.peer
        );
    }
    Ok(())
}

fn run(a: &Args, nfs: &NfsServer, ours: &Ours, work: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mib = a.size_mib;
    // 1. Sequential write.
    let mut block = vec![0u8; 1 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let t = Instant::now();
    let mut f = std::fs::File::create(ours.at.join("big.bin"))?;
    for _ in 0..mib {
        fill(&mut block, &mut x);
        f.write_all(&block)?;
    }
    drop(f);
    let ours_write = mib as f64 / t.elapsed().as_secs_f64();
    let local = work.join("big.bin");
    {
        let mut f = std::fs::File::create(&local)?;
        for _ in 0..mib {
            fill(&mut block, &mut x);
            f.write_all(&block)?;
        }
    }
    let t = Instant::now();
    nfs_cp(&local.to_string_lossy(), &url(nfs, "peer/big.bin"))?;
    let peer_write = mib as f64 / t.elapsed().as_secs_f64();
    eprintln!("write: ours {ours_write:.1} MiB/s, nfs-cp {peer_write:.1} MiB/s");
    rows.push(Row {
        what: format!("sequential write {mib} MiB"),
        unit: "MiB/s",
        ours: ours_write,
        peer: peer_write,
        peer_name: "nfs-cp",
    });
    std::fs::remove_file(&local)?;

    // 2. Sequential read, cold.
    ours.remount()?;
    let t = Instant::now();
    let mut f = std::fs::File::open(ours.at.join("big.bin"))?;
    let mut total = 0u64;
    loop {
        let n = f.read(&mut block)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let ours_read = mib as f64 / t.elapsed().as_secs_f64();
    drop(f);
    if total != mib << 20 {
        bail!("read {total} of {} bytes", mib << 20);
    }
    // nfs-cp writes to a file (not /dev/null): into the page cache, as the mount's reader reads
    // into memory.
    let copy = work.join("copy.bin");
    drop_caches();
    let t = Instant::now();
    nfs_cp(&url(nfs, "peer/big.bin"), &copy.to_string_lossy())?;
    let peer_read = mib as f64 / t.elapsed().as_secs_f64();
    std::fs::remove_file(&copy)?;
    eprintln!("read: ours {ours_read:.1} MiB/s, nfs-cp {peer_read:.1} MiB/s");
    rows.push(Row {
        what: format!("sequential read {mib} MiB (cold)"),
        unit: "MiB/s",
        ours: ours_read,
        peer: peer_read,
        peer_name: "nfs-cp",
    });

    // 3. Metadata.
    let n = a.files;
    let small = ours.at.join("small");
    std::fs::create_dir_all(&small)?;
    let body = [b'x'; 100];
    let t = Instant::now();
    for i in 0..n {
        let mut f = std::fs::File::create(small.join(format!("f{i:05}")))?;
        f.write_all(&body)?;
    }
    let ours_create = n as f64 / t.elapsed().as_secs_f64();
    let one = work.join("one");
    std::fs::write(&one, body)?;
    let t = Instant::now();
    for i in 0..n {
        nfs_cp(&one.to_string_lossy(), &url(nfs, &format!("peer/small/f{i:05}")))?;
    }
    let peer_create = n as f64 / t.elapsed().as_secs_f64();
    eprintln!("create: ours {ours_create:.1}/s, nfs-cp {peer_create:.1}/s");
    rows.push(Row {
        what: format!("create {n} files"),
        unit: "files/s",
        ours: ours_create,
        peer: peer_create,
        peer_name: "nfs-cp per file",
    });
    ours.remount()?;
    let t = Instant::now();
    for i in 0..n {
        let m = std::fs::metadata(small.join(format!("f{i:05}")))?;
        if m.len() != 100 {
            bail!("f{i:05} has {} bytes", m.len());
        }
    }
    let ours_stat = n as f64 / t.elapsed().as_secs_f64();
    eprintln!("stat: ours {ours_stat:.1}/s");
    ours.remount()?;
    let t = Instant::now();
    let count = std::fs::read_dir(&small)?.count();
    let ours_list = count as f64 / t.elapsed().as_secs_f64();
    if count != n {
        bail!("listed {count} of {n}");
    }
    let t = Instant::now();
    let out = Command::new("nfs-ls").arg(url(nfs, "peer/small")).output()?;
    let listed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" f"))
        .count();
    let peer_list = listed as f64 / t.elapsed().as_secs_f64();
    if listed != n {
        bail!("nfs-ls listed {listed} of {n}");
    }
    eprintln!("list: ours {ours_list:.1}/s, nfs-ls {peer_list:.1}/s");
    rows.push(Row {
        what: format!("list {n} files (cold)"),
        unit: "entries/s",
        ours: ours_list,
        peer: peer_list,
        peer_name: "nfs-ls",
    });
    rows.push(Row {
        what: format!("stat {n} files (cold)"),
        unit: "stats/s",
        ours: ours_stat,
        peer: f64::NAN,
        peer_name: "no libnfs tool",
    });
    Ok(rows)
}
