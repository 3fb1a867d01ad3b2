//! libfuzzer entry for `cni_config_fields`: a CNI network configuration from chosen fields and values, prevResult included. The target and its properties live in
//! `nodeless_eni_cni::spec::fuzz::config_fields`, which the crate's `tests/fuzz_props.rs` also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_eni_cni::spec::fuzz::config_fields(data));
