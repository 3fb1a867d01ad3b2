//! The OSS driver's file system against Debian's `s3fs`, in one run, on one S3 server (this
//! crate's `s3-server`, s3s-fs, on loopback), each in its own prefix of the same bucket. Needs
//! root and `s3fs`.
//!
//! 1. sequential write of one file (1 MiB writes, the close included: both upload there);
//! 2. sequential read of it, after a fresh mount and dropped page caches;
//! 3. create N small files (open, write 100 bytes, close), one after another;
//! 4. stat the N files by name, after a fresh mount (nothing cached);
//! 5. list the directory of N files, after a fresh mount.
//!
//! Each client runs as users run it: ours as the driver starts it (`nodeless csi fuse-mount`,
//! its defaults), s3fs with the options the bucket needs and its defaults otherwise.
//!
//! `oss-bench [--size-mib 1024] [--files 10000]`; it prints a table with the ratios (ours / s3fs).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use nodeless_tests::fuse_bench::{drop_caches, fuse_mount, unmount, wait_for};
use nodeless_tests::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use nodeless_volumes::oss::params::MountConfig;

struct Args {
    size_mib: u64,
    files: usize,
}

fn args() -> Args {
    let mut a = Args {
        size_mib: 1024,
        files: 10_000,
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

fn mounted(at: &Path) -> bool {
    nodeless_volumes::fuse::mounted_at(at)
}

/// One of the two clients.
enum Client {
    Ours { config: PathBuf },
    S3fs { source: String, options: String },
}

struct Mount {
    name: &'static str,
    client: Client,
    at: PathBuf,
}

impl Mount {
    fn mount(&self) -> Result<()> {
        std::fs::create_dir_all(&self.at)?;
        match &self.client {
            Client::Ours { config } => return fuse_mount(config, &self.at),
            Client::S3fs { source, options } => {
                let st = Command::new("s3fs")
                    .arg(source)
                    .arg(&self.at)
                    .args(["-o", options])
                    .status()
                    .context("running s3fs (apt-get install s3fs)")?;
                if !st.success() {
                    bail!("s3fs failed: {st}");
                }
            }
        }
        wait_for(&format!("{} mounted", self.name), 30, || mounted(&self.at))
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

struct Row {
    what: String,
    unit: &'static str,
    ours: f64,
    s3fs: f64,
}

fn seq_write(dir: &Path, mib: u64) -> Result<f64> {
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let t = Instant::now();
    let mut f = std::fs::File::create(dir.join("big.bin"))?;
    for _ in 0..mib {
        // Different bytes in every block, cheaply.
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&block)?;
    }
    drop(f);
    Ok(mib as f64 / t.elapsed().as_secs_f64())
}

fn seq_read(dir: &Path, mib: u64) -> Result<f64> {
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::open(dir.join("big.bin"))?;
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    if total != mib << 20 {
        bail!("read {total} bytes of {}", mib << 20);
    }
    Ok(mib as f64 / t.elapsed().as_secs_f64())
}

fn creates(dir: &Path, n: usize) -> Result<f64> {
    let d = dir.join("small");
    std::fs::create_dir_all(&d)?;
    let body = [b'x'; 100];
    let t = Instant::now();
    for i in 0..n {
        let mut f = std::fs::File::create(d.join(format!("f{i:05}")))?;
        f.write_all(&body)?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn stats(dir: &Path, n: usize) -> Result<f64> {
    let d = dir.join("small");
    let t = Instant::now();
    for i in 0..n {
        let m = std::fs::metadata(d.join(format!("f{i:05}")))?;
        if m.len() != 100 {
            bail!("f{i:05} has {} bytes", m.len());
        }
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn list(dir: &Path, n: usize) -> Result<f64> {
    let t = Instant::now();
    let count = std::fs::read_dir(dir.join("small"))?.count();
    if count != n {
        bail!("listed {count} of {n}");
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let a = args();
    let s3 = S3Server::start("bench-bucket")?;
    let work = tempfile::Builder::new().prefix("oss-bench-").tempdir()?;
    std::fs::create_dir_all(s3.bucket_dir().join("ours"))?;
    std::fs::create_dir_all(s3.bucket_dir().join("s3fs"))?;
    let ours_at = work.path().join("ours");
    let cache = work.path().join("cache");
    std::fs::create_dir_all(&cache)?;
    let config = MountConfig {
        endpoint: s3.url.clone(),
        bucket: s3.bucket.clone(),
        region: "us-east-1".into(),
        path_style: true,
        prefix: "ours/".into(),
        uid: 0,
        gid: 0,
        umask: 0o022,
        read_only: false,
        listing_ttl_secs: nodeless_volumes::oss::params::LISTING_TTL_SECS,
        part_mib: nodeless_volumes::oss::params::PART_MIB,
        parallel: nodeless_volumes::oss::params::PARALLEL,
        readahead_mib: nodeless_volumes::oss::params::READAHEAD_MIB,
        access_key: Some(ACCESS_KEY.into()),
        secret_key: Some(SECRET_KEY.into()),
        mountpoint: ours_at.clone(),
        cache_dir: cache,
        stats_file: work.path().join("stats.json"),
    };
    let config_path = work.path().join("config.json");
    let mut value = serde_json::to_value(&config)?;
    value["kind"] = serde_json::json!(nodeless_volumes::oss::KIND);
    std::fs::write(&config_path, serde_json::to_vec(&value)?)?;
    let passwd = work.path().join("passwd");
    std::fs::write(&passwd, format!("{ACCESS_KEY}:{SECRET_KEY}"))?;
    std::fs::set_permissions(&passwd, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let mounts = [
        Mount {
            name: "ours",
            client: Client::Ours { config: config_path },
            at: ours_at,
        },
        Mount {
            name: "s3fs",
            client: Client::S3fs {
                source: format!("{}:/s3fs", s3.bucket),
                options: format!("url={},use_path_request_style,passwd_file={}", s3.url, passwd.display()),
            },
            at: work.path().join("s3fs"),
        },
    ];
    for m in &mounts {
        m.mount()?;
    }
    let result = run(&a, &mounts);
    for m in &mounts {
        let _ = m.unmount();
    }
    let rows = result?;
    server_alone(&s3, a.size_mib, "ours/big.bin", "ours/small/")?;
    println!(
        "\nOSS file system vs s3fs {} (same s3s-fs server on loopback, same machine)\n",
        s3fs_version()
    );
    println!("| work | unit | ours | s3fs | ours / s3fs |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | ×{:.2} |",
            r.what,
            r.unit,
            r.ours,
            r.s3fs,
            r.ours / r.s3fs
        );
    }
    Ok(())
}

/// What the server itself serves through the S3 API to the driver's own client, no file system
/// in between, with the mount's parallelism: the bound both clients work under.
fn server_alone(s3: &S3Server, mib: u64, big: &str, small: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let client = s3.client();
    let part = nodeless_volumes::oss::params::PART_MIB << 20;
    let parallel = nodeless_volumes::oss::params::PARALLEL;
    let size = mib << 20;
    rt.block_on(async {
        use futures::StreamExt;
        let t = Instant::now();
        let parts = size.div_ceil(part);
        let got: Vec<_> = futures::stream::iter((0..parts).map(|i| {
            let c = &client;
            async move { c.get_range(big, i * part, ((i + 1) * part).min(size)).await }
        }))
        .buffer_unordered(parallel)
        .collect()
        .await;
        let bytes: u64 = got
            .into_iter()
            .map(|r| r.map(|b| b.len() as u64))
            .sum::<Result<u64, _>>()?;
        let get = bytes as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64();
        let body = bytes::Bytes::from(vec![7u8; part as usize]);
        let t = Instant::now();
        let upload = client.multipart_start("alone/big.bin").await?;
        let etags: Vec<_> = futures::stream::iter((0..parts).map(|i| {
            let (c, b, u) = (&client, body.clone(), &upload);
            async move { c.multipart_part("alone/big.bin", u, (i + 1) as u16, b).await }
        }))
        .buffered(parallel)
        .collect()
        .await;
        let etags = etags.into_iter().collect::<Result<Vec<_>, _>>()?;
        client.multipart_finish("alone/big.bin", &upload, &etags).await?;
        let put = mib as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let listed = client.list_level(small).await?.objects.len();
        let list = listed as f64 / t.elapsed().as_secs_f64();
        println!(
            "\nThe server alone, through the S3 API (the driver's client, {parallel} requests at once, {} MiB parts): \
             ranged GETs {get:.1} MiB/s, multipart PUT {put:.1} MiB/s, listing {listed} keys {list:.1} keys/s",
            part >> 20
        );
        Ok::<_, anyhow::Error>(())
    })
}

fn s3fs_version() -> String {
    Command::new("s3fs")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| {
                    l.split_whitespace()
                        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
                })
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn run(a: &Args, mounts: &[Mount; 2]) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    type Work<'a> = (String, &'static str, bool, Box<dyn Fn(&Path) -> Result<f64> + 'a>);
    let work: Vec<Work<'_>> = vec![
        (
            format!("sequential write {} MiB", a.size_mib),
            "MiB/s",
            false,
            Box::new(|d| seq_write(d, a.size_mib)),
        ),
        (
            format!("sequential read {} MiB (cold)", a.size_mib),
            "MiB/s",
            true,
            Box::new(|d| seq_read(d, a.size_mib)),
        ),
        (
            format!("create {} files", a.files),
            "files/s",
            false,
            Box::new(|d| creates(d, a.files)),
        ),
        (
            format!("stat {} files (cold)", a.files),
            "stats/s",
            true,
            Box::new(|d| stats(d, a.files)),
        ),
        (
            format!("list {} files (cold)", a.files),
            "entries/s",
            true,
            Box::new(|d| list(d, a.files)),
        ),
    ];
    for (what, unit, cold, f) in work {
        let mut got = [0.0; 2];
        for (i, m) in mounts.iter().enumerate() {
            if cold {
                m.remount()?;
            }
            got[i] = f(&m.at).with_context(|| format!("{what} on {}", m.name))?;
            eprintln!("{what}: {} {:.1} {unit}", m.name, got[i]);
        }
        rows.push(Row {
            what,
            unit,
            ours: got[0],
            s3fs: got[1],
        });
    }
    Ok(rows)
}
