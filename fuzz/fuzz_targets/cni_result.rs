//! libfuzzer entry for `cni_result`: a CNI result: read back as written in every supported version. The target and its properties live in
//! `nodeless_eni_cni::spec::fuzz::result`, which the crate's `tests/fuzz_props.rs` also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_eni_cni::spec::fuzz::result(data));
