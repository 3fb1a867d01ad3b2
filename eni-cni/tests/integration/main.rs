//! eni-cni's privileged integration tests: one binary (a list of modules), each test making its
//! own network namespaces, interfaces and BPF pins under unique names and removing them even
//! when it fails. Run as root (`cargo test -p nodeless-eni-cni --test integration`); without
//! root each test says it was skipped.

mod support;
mod upgrade;
mod walls;
