//! Builds the eBPF programs in ../bpf with clang (`-g -O2 -target bpf`, BTF on) into OUT_DIR,
//! where `src/bpf.rs` embeds them, and the upgrade test's stand-in for an older datapath
//! (`tests/integration/datapath_v1.c`), which only that test embeds.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let bpf = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../bpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // The plugin is exec'd for every pod: a position-dependent executable skips the ~1 ms the
    // loader spends applying relative relocations to a 20 MB PIE at each start.
    println!("cargo:rustc-link-arg-bins=-no-pie");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // Headers of logic shared by the programs.
    println!("cargo:rerun-if-changed={}", bpf.join("walls.h").display());
    let fixtures = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("tests/integration");
    for (dir, name) in [(&bpf, "datapath"), (&bpf, "service"), (&fixtures, "datapath_v1")] {
        for f in [format!("{name}.c"), format!("{name}.h")] {
            if dir.join(&f).exists() {
                println!("cargo:rerun-if-changed={}", dir.join(f).display());
            }
        }
        let status = Command::new(&clang)
            .args([
                "-g",
                "-O2",
                "-target",
                "bpf",
                "-Wall",
                "-Werror",
                "-I/usr/include/x86_64-linux-gnu",
                "-c",
            ])
            .arg(dir.join(format!("{name}.c")))
            .arg("-o")
            .arg(out.join(format!("{name}.o")))
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!(
                "clang failed ({s}) building {}",
                dir.join(format!("{name}.c")).display()
            ),
            Err(e) => panic!("running {clang}: {e} (apt-get install clang libbpf-dev; scripts/up and scripts/test do)"),
        }
    }
}
