//! Removing everything a node made on this machine, for `nodeless down --purge` (and for tests
//! and benchmarks that stop a node with pods still running): its containers, its supervisor
//! (which holds the pods' namespaces, so their network goes with it), the mounts under its data
//! and run directories, its eBPF pins and its cgroups. A node stopped the ordinary way leaves its
//! pods running for the next start to adopt; this is the way to say there is no next start.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The node's runtime state directory (`/run/nodeless/<node>`).
pub fn run_dir(node: &str) -> PathBuf {
    Path::new("/run/nodeless").join(node)
}

/// The containers the node's OCI runtime still knows (one directory each under its `--root`).
pub fn runtime_containers(node: &str) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(run_dir(node).join("runtime"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids
}

/// The PIDs of the node's supervisor (`nodeless-shim keep --socket <run dir>/keeper.sock`, the
/// parent of every container and the holder of the pods' namespaces), read from /proc.
pub fn supervisor_pids(node: &str) -> Vec<u32> {
    let socket = run_dir(node).join("keeper.sock");
    let socket = socket.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args.first().is_some_and(|a| a.ends_with(b"nodeless-shim"));
        if is_shim
            && args.get(1) == Some(&&b"keep"[..])
            && args.windows(2).any(|w| w[0] == b"--socket" && w[1] == socket)
        {
            pids.push(pid);
        }
    }
    pids
}

/// Mount points under any of `dirs`, deepest (last mounted) first, from /proc/self/mountinfo
/// (whose paths escape space, tab, newline and backslash in octal).
pub fn mounts_under(dirs: &[&Path]) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| dirs.iter().any(|d| p.starts_with(d) && p != d))
        .collect();
    points.reverse();
    points
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Remove what node `node` (with its state under `node_data`) left on the machine; what could
/// not be removed, each with why. The node itself must be stopped first.
pub fn purge(node: &str, node_data: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let run = run_dir(node);
    let root = run.join("runtime");
    for id in runtime_containers(node) {
        let deleted = ["crun", "runc"].iter().any(|rt| {
            std::process::Command::new(rt)
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !deleted {
            // Killing the supervisor below ends the container's processes all the same.
            tracing::debug!(container = %id, "no runtime deleted the container");
        }
    }
    // MicroVMs: their QEMUs hold the pods' shares and taps.
    for vm in std::fs::read_dir(run.join("vm")).into_iter().flatten().flatten() {
        if let Some(pid) = crate::vm::qemu::running_pid(&vm.path()) {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
                problems.push(format!("killing a pod's QEMU (pid {pid}): {e}"));
            }
        }
    }
    for pid in supervisor_pids(node) {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
            problems.push(format!("killing the node's supervisor (pid {pid}): {e}"));
        }
    }
    for m in mounts_under(&[node_data, &run]) {
        use nix::mount::MntFlags;
        match nix::mount::umount2(&m, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => problems.push(format!("unmounting {}: {e}", m.display())),
        }
    }
    // eBPF pins: the fast path's program and maps, and the service balancer's cgroup hooks, which
    // stay attached while their links are pinned.
    for dir in [
        run.clone(),
        Path::new("/sys/fs/bpf/nodeless").join(node),
        Path::new("/sys/fs/bpf/nodeless/lb").join(node),
    ] {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => problems.push(format!("removing {}: {e}", dir.display())),
        }
    }
    // A cgroup goes once its last process has exited, a moment after the kill.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = node_cgroups(node)
            .into_iter()
            .filter(|d| std::fs::remove_dir(d).is_err())
            .collect::<Vec<_>>();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            problems.extend(
                left.iter()
                    .map(|d| format!("cgroup {} still has processes", d.display())),
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    problems
}

/// The node's cgroup directories in every hierarchy, deepest first.
fn node_cgroups(node: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for ctl in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let base = ctl.path().join("nodeless").join(node);
        let mut stack = vec![base.clone()];
        let mut found = Vec::new();
        while let Some(d) = stack.pop() {
            if !d.is_dir() {
                continue;
            }
            stack.extend(
                std::fs::read_dir(&d)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir()),
            );
            found.push(d);
        }
        // Children come after their parents in `found`: reversed, deepest first.
        dirs.extend(found.into_iter().rev());
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo(r"/a\040b/c\134d"), "/a b/c\\d");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\04"), r"/end\04");
    }

    #[test]
    fn mounts_under_a_directory_exclude_the_directory_itself() {
        // /proc is mounted on every Linux machine; nothing is mounted under a fresh temp dir.
        assert!(mounts_under(&[Path::new("/")]).iter().any(|p| p == Path::new("/proc")));
        let t = tempfile::tempdir().unwrap();
        assert!(mounts_under(&[t.path()]).is_empty());
    }
}
