//! libfuzzer entry for `patch_strategic`: a strategic merge patch: applied or a typed error; without directives or keyed lists, a merge patch. The target and its properties live in
//! `nodeless_control::patch::fuzz::strategic`, which the crate's `tests/fuzz_props.rs` also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_control::patch::fuzz::strategic(data));
