//! `eni-cni`, the binary a container runtime runs (CNI_COMMAND set): it hands the verb to the
//! pool service its configuration names, which runs it in a warm process, and prints the
//! answer. This binary is small on purpose: a runtime starts it for every ADD and DEL, and
//! mapping and faulting in `eni-cnid` (the pool, the datapath, the service load balancer, a
//! Kubernetes client) cost about a millisecond of each ADD.
//!
//! What the pool cannot take (VERSION, host mode, input that does not parse, no pool listening)
//! and every subcommand (`eni-cni pool`, `show`, `services`) go to `eni-cnid` beside this
//! binary, with the same arguments, environment and standard input.

use std::io::{Read, Seek, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nodeless_eni_cni::plugin;
use nodeless_eni_cni::spec::{CniError, code};

fn main() {
    let is_plugin = std::env::var_os("CNI_COMMAND").is_some() || std::env::args_os().len() == 1;
    let mut stdin = Vec::new();
    if is_plugin {
        let env = plugin::environment();
        let _ = std::io::stdin().read_to_end(&mut stdin);
        if let Some((code, text)) = plugin::forward(&env, &stdin) {
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            std::process::exit(code);
        }
    }
    let error = become_full(is_plugin.then_some(&stdin[..]));
    if is_plugin {
        let e = CniError::new(code::IO, "running eni-cnid", error);
        println!("{}", e.to_json("1.1.0"));
    } else {
        eprintln!("eni-cni: running eni-cnid: {error}");
    }
    std::process::exit(1);
}

/// Replace this process with `eni-cnid` beside it; the standard input already read is handed
/// on in a memory file. Returns only on failure.
fn become_full(stdin: Option<&[u8]>) -> String {
    let full = match std::env::current_exe() {
        Ok(p) => p.with_file_name("eni-cnid"),
        Err(e) => return format!("finding this binary: {e}"),
    };
    let mut cmd = Command::new(&full);
    cmd.args(std::env::args_os().skip(1));
    if let Some(bytes) = stdin {
        let file = nix::sys::memfd::memfd_create(c"eni-cni-stdin", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
            .map(std::fs::File::from);
        let mut file = match file {
            Ok(f) => f,
            Err(e) => return format!("a memory file for the standard input: {e}"),
        };
        if let Err(e) = file.write_all(bytes).and_then(|()| file.rewind()) {
            return format!("a memory file for the standard input: {e}");
        }
        cmd.stdin(Stdio::from(file));
    }
    format!("{}: {}", full.display(), cmd.exec())
}
