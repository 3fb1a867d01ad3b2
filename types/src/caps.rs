//! The Linux capabilities a pod's container may hold, decided in one place.
//!
//! Admission (control) and the node (sandbox-node) both call [`effective`]: a pod that admission
//! lets through is one the node runs, and a capability the node would refuse is refused at
//! `kubectl apply` time with the same words. Names are matched as Kubernetes users write them,
//! in any case and with or without `CAP_` (`sys_admin`, `Cap_Sys_Admin` and `CAP_SYS_ADMIN` are
//! one capability), so spelling cannot slip a capability past either check.

use std::fmt;

/// Capabilities a container gets unless it drops them (containerd's default set).
pub const DEFAULT: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// What a container may add beyond the defaults: confined to its own namespaces.
pub const ADDABLE: [&str; 1] = ["CAP_NET_ADMIN"];

/// `ALL`, as `drop: [ALL]` writes it (any case).
const ALL: &str = "ALL";

/// A capability the pod asks to add that this platform does not grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotGranted {
    /// The capability in canonical form (`CAP_SYS_ADMIN`, or `ALL`).
    pub capability: String,
}

impl fmt::Display for NotGranted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "capability {} is outside the set this platform grants ({} and {})",
            self.capability,
            DEFAULT.join(", "),
            ADDABLE.join(", ")
        )
    }
}

impl std::error::Error for NotGranted {}

/// The canonical spelling of a capability name: upper case with the `CAP_` prefix (`ALL`
/// stays `ALL`).
pub fn canonical(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    if upper.starts_with("CAP_") || upper == ALL {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

/// The capability set after a container's `add` and `drop`, in canonical form: the defaults
/// less what is dropped (`ALL` drops every default), plus what is added. Adding anything
/// outside [`DEFAULT`] and [`ADDABLE`] (`ALL` included) is refused.
pub fn effective<A: AsRef<str>, D: AsRef<str>>(add: &[A], drop: &[D]) -> Result<Vec<String>, NotGranted> {
    let drop: Vec<String> = drop.iter().map(|d| canonical(d.as_ref())).collect();
    let mut caps: Vec<String> = if drop.iter().any(|d| d == ALL) {
        Vec::new()
    } else {
        DEFAULT
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    for a in add.iter().map(|a| canonical(a.as_ref())) {
        if !DEFAULT.contains(&a.as_str()) && !ADDABLE.contains(&a.as_str()) {
            return Err(NotGranted { capability: a });
        }
        if !caps.contains(&a) {
            caps.push(a);
        }
    }
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::{ADDABLE, DEFAULT, NotGranted, canonical, effective};

    const NONE: [&str; 0] = [];

    #[test]
    fn names_are_one_capability_in_any_spelling() {
        for n in [
            "sys_admin",
            "Cap_Sys_Admin",
            "CAP_SYS_ADMIN",
            "cap_sys_admin",
            "SYS_ADMIN",
            " SYS_ADMIN ",
        ] {
            assert_eq!(canonical(n), "CAP_SYS_ADMIN", "{n:?}");
        }
        assert_eq!(canonical("all"), "ALL");
    }

    #[test]
    fn adds_outside_the_grant_are_refused_in_every_spelling() {
        for n in [
            "sys_admin",
            "Cap_Sys_Admin",
            "CAP_SYS_ADMIN",
            "SYS_ADMIN",
            "sys_module",
            "SYS_RAWIO",
            "sys_ptrace",
            "all",
            "ALL",
            "bogus",
        ] {
            let err = effective(&[n], &NONE).unwrap_err();
            assert_eq!(
                err,
                NotGranted {
                    capability: canonical(n)
                },
                "{n}"
            );
            assert!(err.to_string().contains(&canonical(n)), "{err}");
        }
    }

    #[test]
    fn defaults_drops_and_adds() {
        assert_eq!(effective(&NONE, &NONE).unwrap(), DEFAULT.to_vec());
        let caps = effective(&["net_admin"], &["NET_RAW"]).unwrap();
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_NET_RAW".to_string()));
        assert_eq!(effective(&["CHOWN"], &["all"]).unwrap(), vec!["CAP_CHOWN".to_string()]);
        assert_eq!(
            effective(&["Cap_Chown", "chown"], &["ALL"]).unwrap(),
            vec!["CAP_CHOWN".to_string()],
            "added once"
        );
        assert!(effective(&NONE, &["All"]).unwrap().is_empty());
        for a in ADDABLE {
            assert!(
                effective(&[a.to_ascii_lowercase()], &NONE)
                    .unwrap()
                    .contains(&a.to_string())
            );
        }
    }
}
