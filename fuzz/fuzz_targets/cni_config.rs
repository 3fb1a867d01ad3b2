//! libfuzzer entry for `cni_config`: a CNI network configuration's raw bytes: valid, or refused with a config error code. The target and its properties live in
//! `nodeless_eni_cni::spec::fuzz::config`, which the crate's `tests/fuzz_props.rs` also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_eni_cni::spec::fuzz::config(data));
