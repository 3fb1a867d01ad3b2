//! Builds the eBPF programs in ../bpf with clang (`-g -O2 -target bpf`, BTF on) into OUT_DIR,
//! where `src/bpf.rs` embeds them.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let bpf = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../bpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for f in ["datapath.c", "datapath.h"] {
        println!("cargo:rerun-if-changed={}", bpf.join(f).display());
    }
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let status = Command::new(&clang)
        .args(["-g", "-O2", "-target", "bpf", "-Wall", "-Werror", "-I/usr/include/x86_64-linux-gnu", "-c"])
        .arg(bpf.join("datapath.c"))
        .arg("-o")
        .arg(out.join("datapath.o"))
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("clang failed ({s}) building bpf/datapath.c"),
        Err(e) => panic!("running {clang}: {e} (apt-get install clang libbpf-dev; scripts/up and scripts/test do)"),
    }
}
