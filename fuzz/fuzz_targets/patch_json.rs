//! libfuzzer entry for `patch_json`: a JSON patch: whole equals one operation at a time; adds test, removes undo. The target and its properties live in
//! `nodeless_control::patch::fuzz::json`, which the crate's `tests/fuzz_props.rs` also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_control::patch::fuzz::json(data));
