//! Build the test images as OCI layouts under a directory (for trying Nodeless by hand and for
//! the benchmarks): `build-test-images <dir>`, then `nodeless image import <dir>/busybox`.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "test-images".into()));
    let busybox = nodeless_tests::images::busybox_layout(&dir.join("busybox"))?;
    let echo = nodeless_tests::images::echo_layout(&dir.join("echo"), &nodeless_tests::echo_binary()?)?;
    println!("{}\n{}", busybox.display(), echo.display());
    Ok(())
}
