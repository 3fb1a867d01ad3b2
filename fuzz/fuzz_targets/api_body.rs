//! libfuzzer entry for `api_body`: an API request body as JSON or YAML: decoded, or refused with a 400. The target and its properties live in
//! `nodeless_control::patch::fuzz::body`, which the crate's `tests/fuzz_props.rs` also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_control::patch::fuzz::body(data));
