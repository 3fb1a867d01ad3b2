//! The seccomp profile every container runs under: an allow-list, the OCI `linux.seccomp`
//! object as a pure function, so it is reviewed and tested without a runtime.
//!
//! A deny-list lets through every system call nobody thought of, and each kernel adds some
//! (the new mount API, io_uring and `clone3` all arrived after the lists that missed them).
//! Here a call is refused with EPERM unless it is named below, as in Docker's and containerd's
//! default profiles, and this list is the shorter: calls a pod has no need of stay out even
//! where Docker lets them in (`ptrace` and `process_vm_readv`/`writev`, which it allows on
//! kernels from 4.8). What is left out on purpose:
//! - namespaces: `unshare`, `setns`, and `clone` with any `CLONE_NEW*` flag (a masked rule on
//!   its flags); `clone3` passes its flags in memory a filter cannot read, so it answers ENOSYS
//!   and glibc and Go fall back to `clone` (musl never calls it);
//! - mounts, old and new API: `mount`, `umount`/`umount2`, `pivot_root`, `fsopen`, `fsconfig`,
//!   `fsmount`, `fspick`, `move_mount`, `open_tree`, `mount_setattr`;
//! - kernel attack surface a pod needs not reach: `bpf`, `perf_event_open`, `userfaultfd`,
//!   `io_uring_*`, the keyrings (`keyctl`, `add_key`, `request_key`, which are not namespaced);
//! - the machine's own state: modules, `kexec_*`, `reboot`, swap, clocks (`settimeofday`,
//!   `clock_settime`, `clock_adjtime`, `adjtimex`), `acct`, quotas, `iopl`/`ioperm`, `syslog`;
//! - reaching other processes' memory or files: `ptrace`, `process_vm_*`, `process_madvise`,
//!   `pidfd_getfd`, `kcmp`, `open_by_handle_at`;
//! - `personality` except the values programs really set (Linux, 32-bit, uname26, query), and
//!   `socket` for `AF_VSOCK`, which reaches the hypervisor when the node is a VM (an i386
//!   program can still ask through `socketcall`, whose arguments sit in memory, as Docker's
//!   profile also allows).
//!
//! Every name must be known to the runtime's libseccomp (Debian 12's 2.5.4 here): crun 1.8 and
//! runc 1.1 skip a name it does not know without a word, so a misspelt call here would be
//! refused in every pod. The e2e suite checks each name with `scmp_sys_resolver`.

use serde_json::{Value, json};

/// The x86-64 ABI and the two others an x86-64 kernel runs (i386 and x32): a filter that
/// named only x86-64 would let a 32-bit binary in through the other entry points.
const ARCHITECTURES: [&str; 3] = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"];

/// `errno` for a refused call: EPERM, as a missing capability would say.
const EPERM: u32 = 1;
/// `errno` for `clone3`: ENOSYS, which libc and Go read as "use `clone`" (EPERM they would
/// report as a failure).
const ENOSYS: u32 = 38;

/// Every `CLONE_NEW*` flag `clone` takes: NEWNS 0x20000, NEWCGROUP 0x2000000, NEWUTS
/// 0x4000000, NEWIPC 0x8000000, NEWUSER 0x10000000, NEWPID 0x20000000, NEWNET 0x40000000.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// `AF_VSOCK`, the address family that talks to the hypervisor.
const AF_VSOCK: u64 = 40;

/// The `personality` values allowed: PER_LINUX, PER_LINUX32, UNAME26, PER_LINUX32|UNAME26, and
/// 0xffffffff, which only reads the current one. The others switch on legacy behaviour
/// (`READ_IMPLIES_EXEC`, `ADDR_NO_RANDOMIZE`, …) that weakens the process's own defences.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xFFFF_FFFF];

/// Files, directories, descriptors, extended attributes and file events.
#[rustfmt::skip]
const FILES: &[&str] = &[
    "access", "cachestat", "chdir", "chmod", "chown", "chroot", "close", "close_range", "copy_file_range", "creat", "dup", "dup2", "dup3", "faccessat",
    "faccessat2", "fadvise64", "fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchownat", "fcntl", "fdatasync", "fgetxattr",
    "flistxattr", "flock", "fremovexattr", "fsetxattr", "fstat", "fstatfs", "fsync", "ftruncate", "futimesat", "getcwd", "getdents", "getdents64",
    "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "ioctl", "lchown", "lgetxattr", "link", "linkat", "listxattr",
    "llistxattr", "lremovexattr", "lseek", "lsetxattr", "lstat", "mkdir", "mkdirat", "mknod", "mknodat", "newfstatat", "open", "openat", "openat2",
    "pread64", "preadv", "preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "removexattr", "rename",
    "renameat", "renameat2", "rmdir", "sendfile", "setxattr", "splice", "stat", "statfs", "statx", "symlink", "symlinkat", "sync", "sync_file_range",
    "syncfs", "tee", "truncate", "umask", "unlink", "unlinkat", "utime", "utimensat", "utimes", "vmsplice", "write", "writev",
];

/// Waiting on descriptors, and the descriptors made for waiting: pipes, eventfd, signalfd,
/// timerfd, epoll, and Linux AIO (not io_uring).
#[rustfmt::skip]
const EVENTS: &[&str] = &[
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait", "eventfd", "eventfd2", "io_cancel", "io_destroy",
    "io_getevents", "io_pgetevents", "io_setup", "io_submit", "pipe", "pipe2", "poll", "ppoll", "pselect6", "select", "signalfd", "signalfd4",
    "timerfd_create", "timerfd_gettime", "timerfd_settime",
];

/// The process's own memory.
#[rustfmt::skip]
const MEMORY: &[&str] = &[
    "brk", "madvise", "map_shadow_stack", "membarrier", "memfd_create", "mincore", "mlock", "mlock2", "mlockall", "mmap", "mprotect", "mremap", "msync",
    "munlock", "munlockall", "munmap", "pkey_alloc", "pkey_free", "pkey_mprotect", "remap_file_pages",
];

/// Processes and threads (`clone` is a rule of its own), signals, scheduling, limits, and the
/// sandboxes a process may put itself in (seccomp, landlock).
#[rustfmt::skip]
const PROCESSES: &[&str] = &[
    "alarm", "arch_prctl", "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "futex", "futex_waitv", "get_robust_list",
    "get_thread_area", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrlimit", "getrusage", "getsid", "gettid", "ioprio_get", "ioprio_set",
    "kill", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "pause", "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64",
    "restart_syscall", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_tgsigqueueinfo", "sched_get_priority_max", "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_getscheduler",
    "sched_rr_get_interval", "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "set_robust_list",
    "set_thread_area", "set_tid_address", "setpgid", "setpriority", "setrlimit", "setsid", "sigaltstack", "tgkill", "tkill", "vfork", "wait4", "waitid",
];

/// User and group ids: changing them is what `CAP_SETUID`/`CAP_SETGID` allow, inside the pod.
#[rustfmt::skip]
const CREDENTIALS: &[&str] = &[
    "getegid", "geteuid", "getgid", "getgroups", "getresgid", "getresuid", "getuid", "setfsgid", "setfsuid", "setgid", "setgroups", "setregid", "setresgid",
    "setresuid", "setreuid", "setuid",
];

/// Reading clocks, sleeping and timers (setting the clock is not here).
#[rustfmt::skip]
const TIME: &[&str] = &[
    "clock_getres", "clock_gettime", "clock_nanosleep", "getitimer", "gettimeofday", "nanosleep", "setitimer", "time", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_settime", "times",
];

/// What the machine is: name, load, CPU, randomness.
const SYSTEM: &[&str] = &["getcpu", "getrandom", "sysinfo", "uname"];

/// Sockets once made (`socket` itself is a rule of its own), System V IPC and POSIX message
/// queues (both in the pod's IPC namespace).
#[rustfmt::skip]
const IPC: &[&str] = &[
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt", "listen", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedsend", "mq_unlink", "msgctl", "msgget", "msgrcv", "msgsnd", "recvfrom", "recvmmsg", "recvmsg", "semctl", "semget", "semop", "semtimedop",
    "sendmmsg", "sendmsg", "sendto", "setsockopt", "shutdown", "shmat", "shmctl", "shmdt", "shmget", "socketpair",
];

/// The i386 ABI's own names for the calls above (32-bit ids, 64-bit offsets, the socket and
/// IPC multiplexers, the old signal calls, and the `_time64` calls 32-bit programs use since
/// 2038-proofing). libseccomp applies each on the architectures that have it.
#[rustfmt::skip]
const I386: &[&str] = &[
    "_llseek", "_newselect", "chown32", "clock_getres_time64", "clock_gettime64", "clock_nanosleep_time64", "fadvise64_64", "fchown32", "fcntl64", "fstat64",
    "fstatat64", "fstatfs64", "ftruncate64", "futex_time64", "getegid32", "geteuid32", "getgid32", "getgroups32", "getresgid32", "getresuid32", "getuid32",
    "io_pgetevents_time64", "ipc", "lchown32", "lstat64", "mmap2", "mq_timedreceive_time64", "mq_timedsend_time64", "ppoll_time64", "pselect6_time64",
    "recvmmsg_time64", "rt_sigtimedwait_time64", "sched_rr_get_interval_time64", "semtimedop_time64", "sendfile64", "setfsgid32", "setfsuid32", "setgid32",
    "setgroups32", "setregid32", "setresgid32", "setresuid32", "setreuid32", "setuid32", "sigaction", "signal", "sigpending", "sigprocmask", "sigreturn",
    "sigsuspend", "socketcall", "stat64", "statfs64", "timer_gettime64", "timer_settime64", "timerfd_gettime64", "timerfd_settime64", "truncate64",
    "ugetrlimit", "utimensat_time64", "waitpid",
];

/// Every call allowed whatever its arguments.
pub const ALLOWED: [&[&str]; 9] = [FILES, EVENTS, MEMORY, PROCESSES, CREDENTIALS, TIME, SYSTEM, IPC, I386];

/// The `linux.seccomp` object of a container's `config.json`.
pub fn profile() -> Value {
    let names: Vec<&str> = ALLOWED.iter().flat_map(|group| group.iter().copied()).collect();
    let mut syscalls = vec![
        json!({"names": names, "action": "SCMP_ACT_ALLOW"}),
        // Threads and processes, never namespaces: (flags & CLONE_NAMESPACE_FLAGS) == 0. The
        // flags are the first argument on all three ABIs.
        json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
        }),
        json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}),
        json!({
            "names": ["socket"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}],
        }),
    ];
    // One rule per value: the conditions of one rule must all hold.
    syscalls.extend(
        PERSONALITIES.iter().map(|p| json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": p, "op": "SCMP_CMP_EQ"}]})),
    );
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": ARCHITECTURES,
        "syscalls": syscalls,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::{Value, json};

    use super::{ALLOWED, CLONE_NAMESPACE_FLAGS, profile};

    /// Calls no container may make whatever its arguments: what reaches past the container's
    /// namespaces, or into kernel code a pod has no need of.
    #[rustfmt::skip]
    const NEVER: &[&str] = &[
        // Namespaces and mounts, old and new API.
        "unshare", "setns", "clone3", "mount", "umount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
        "mount_setattr",
        // Kernel surface a pod has no need of.
        "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl", "add_key", "request_key",
        "lookup_dcookie", "fanotify_init", "memfd_secret",
        // The machine's own state.
        "init_module", "finit_module", "delete_module", "create_module", "query_module", "get_kernel_syms", "kexec_load", "kexec_file_load", "reboot",
        "swapon", "swapoff", "settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64", "adjtimex", "acct",
        "quotactl", "quotactl_fd", "iopl", "ioperm", "modify_ldt", "vm86", "vm86old", "syslog", "sethostname", "setdomainname", "vhangup",
        "nfsservctl", "uselib", "ustat", "sysfs", "_sysctl",
        // Other processes' memory, and files by handle.
        "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "process_mrelease", "pidfd_getfd", "kcmp", "name_to_handle_at",
        "open_by_handle_at",
        // NUMA memory policy.
        "mbind", "get_mempolicy", "set_mempolicy", "set_mempolicy_home_node", "migrate_pages", "move_pages",
    ];

    /// What glibc's and musl's start-up and threads, Go's and tokio's runtimes, busybox and
    /// Python call in ordinary running.
    #[rustfmt::skip]
    const ORDINARY: &[&str] = &[
        "execve", "brk", "mmap", "mprotect", "arch_prctl", "set_tid_address", "set_robust_list", "rseq", "prlimit64", "getrandom", "futex", "openat",
        "newfstatat", "statx", "read", "write", "close", "sigaltstack", "rt_sigaction", "rt_sigprocmask", "sched_getaffinity", "sched_yield",
        "epoll_create1", "epoll_ctl", "epoll_pwait", "eventfd2", "pipe2", "wait4", "waitid", "pidfd_open", "gettid", "tgkill", "madvise", "nanosleep",
        "clock_nanosleep", "accept4", "bind", "listen", "setsockopt", "getdents64", "ioctl", "fcntl", "dup3", "uname", "sysinfo", "vfork", "fork",
        "setresuid", "setgroups", "capset", "prctl", "chroot",
    ];

    fn rules(p: &Value) -> &Vec<Value> {
        p["syscalls"].as_array().unwrap()
    }

    /// The rules that name `call`.
    fn rules_for<'a>(p: &'a Value, call: &str) -> Vec<&'a Value> {
        rules(p)
            .iter()
            .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == call))
            .collect()
    }

    /// Allowed whatever the arguments.
    fn allowed_always(p: &Value, call: &str) -> bool {
        rules_for(p, call)
            .iter()
            .any(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
    }

    #[test]
    fn refuses_by_default_with_eperm() {
        let p = profile();
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], 1);
        assert_eq!(
            p["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
    }

    #[test]
    fn escapes_are_not_allowed() {
        let p = profile();
        for call in [
            "mount",
            "unshare",
            "setns",
            "io_uring_setup",
            "keyctl",
            "bpf",
            "ptrace",
            "open_by_handle_at",
            "fsopen",
            "personality",
            "socket",
        ] {
            assert!(!allowed_always(&p, call), "{call} is allowed whatever its arguments");
        }
        for call in NEVER.iter().filter(|c| **c != "clone3") {
            assert!(rules_for(&p, call).is_empty(), "{call} is named in the profile");
        }
    }

    #[test]
    fn clone_only_without_namespace_flags() {
        let p = profile();
        let clone = rules_for(&p, "clone");
        assert_eq!(clone.len(), 1, "{clone:?}");
        assert_eq!(clone[0]["action"], "SCMP_ACT_ALLOW");
        assert_eq!(
            clone[0]["args"],
            json!([{"index": 0, "value": 0x7E02_0000u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}])
        );
        // CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET.
        let flags: u64 = [
            0x0002_0000u64,
            0x0200_0000,
            0x0400_0000,
            0x0800_0000,
            0x1000_0000,
            0x2000_0000,
            0x4000_0000,
        ]
        .iter()
        .sum();
        assert_eq!(CLONE_NAMESPACE_FLAGS, flags);
        // A thread (glibc's pthread_create) and a fork pass the mask.
        let thread = 0x0001_0000
            | 0x0000_0100
            | 0x0000_0200
            | 0x0000_0400
            | 0x0000_0800
            | 0x0004_0000
            | 0x0010_0000
            | 0x0020_0000
            | 0x0008_0000;
        assert_eq!(thread & CLONE_NAMESPACE_FLAGS, 0);
        assert_eq!((0x0120_0000 | 17) & CLONE_NAMESPACE_FLAGS, 0);
    }

    #[test]
    fn clone3_answers_enosys() {
        let p = profile();
        let rules = rules_for(&p, "clone3");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(rules[0]["errnoRet"], 38);
    }

    #[test]
    fn personality_and_socket_only_with_safe_arguments() {
        let p = profile();
        let values: BTreeSet<u64> = rules_for(&p, "personality")
            .iter()
            .map(|r| r["args"][0]["value"].as_u64().unwrap())
            .collect();
        assert_eq!(values, BTreeSet::from([0, 8, 0x20000, 0x20008, 0xFFFF_FFFF]));
        assert!(
            rules_for(&p, "personality")
                .iter()
                .all(|r| r["args"][0]["op"] == "SCMP_CMP_EQ" && r["args"][0]["index"] == 0)
        );
        let socket = rules_for(&p, "socket");
        assert_eq!(socket.len(), 1);
        assert_eq!(
            socket[0]["args"],
            json!([{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}])
        );
    }

    #[test]
    fn what_ordinary_programs_need_is_allowed() {
        let p = profile();
        for call in ORDINARY {
            assert!(allowed_always(&p, call), "{call} is not allowed");
        }
    }

    #[test]
    fn each_allowed_call_is_named_once() {
        let names: Vec<&str> = ALLOWED.iter().flat_map(|g| g.iter().copied()).collect();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "a call is listed twice");
        for n in &names {
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{n:?}"
            );
            assert!(!NEVER.contains(n), "{n} is allowed");
        }
        for special in ["clone", "clone3", "personality", "socket"] {
            assert!(!unique.contains(special), "{special} has a rule of its own");
        }
    }
}
