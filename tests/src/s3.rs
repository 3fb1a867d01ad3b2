//! A bucket for tests and benchmarks of the OSS driver: the `s3-server` binary of this crate
//! (s3s-fs over a temporary directory) on a loopback port, stopped when dropped. Objects can be
//! laid down as files under [`S3Server::bucket_dir`] (s3s-fs serves a bucket's files as its
//! objects), which is how tests make 10,000 objects in a moment.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

pub const ACCESS_KEY: &str = "nodeless-test-ak";
pub const SECRET_KEY: &str = "nodeless-test-sk-0123456789";

pub struct S3Server {
    child: Option<Child>,
    pub root: tempfile::TempDir,
    pub bucket: String,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl S3Server {
    /// Serve `bucket` (made empty) on a free loopback port.
    pub fn start(bucket: &str) -> Result<S3Server> {
        let root = tempfile::Builder::new().prefix("nodeless-s3-").tempdir()?;
        let mut s = S3Server {
            child: None,
            root,
            bucket: bucket.to_string(),
            url: String::new(),
        };
        s.launch("127.0.0.1:0")?;
        Ok(s)
    }

    fn launch(&mut self, listen: &str) -> Result<()> {
        let mut child = Command::new(crate::workspace_binary("s3-server")?)
            .arg("--root")
            .arg(self.root.path())
            .args([
                "--listen",
                listen,
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET_KEY,
            ])
            .args(["--bucket", &self.bucket])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting s3-server (cargo build --bins)")?;
        let stdout = child.stdout.take().context("s3-server's stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("listening ")
            .with_context(|| format!("s3-server said {line:?}"))?
            .to_string();
        self.url = url;
        self.child = Some(child);
        Ok(())
    }

    /// Where the bucket's objects are files.
    pub fn bucket_dir(&self) -> PathBuf {
        self.root.path().join(&self.bucket)
    }

    /// Stop serving (the objects stay).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Serve again on the same port.
    pub fn resume(&mut self) -> Result<()> {
        let addr = self.url.trim_start_matches("http://").to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match self.launch(&addr) {
                Ok(()) => return Ok(()),
                Err(e) if std::time::Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(200)),
            }
        }
    }

    /// A client of the bucket, through the S3 API (the driver's own client).
    pub fn client(&self) -> nodeless_volumes::oss::s3::S3 {
        nodeless_volumes::oss::s3::S3::new(
            &self.url,
            &self.bucket,
            "us-east-1",
            true,
            Some((ACCESS_KEY.into(), SECRET_KEY.into())),
        )
        .expect("an S3 client of the test server")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
