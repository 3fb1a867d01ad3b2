//! libfuzzer entry for `patch_merge`: a merge patch: idempotent, nulls remove. The target and its properties live in
//! `nodeless_control::patch::fuzz::merge`, which the crate's `tests/fuzz_props.rs` also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_control::patch::fuzz::merge(data));
