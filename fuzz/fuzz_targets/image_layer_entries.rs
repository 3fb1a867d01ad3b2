//! libfuzzer entry for `image_layer_entries`: a layer built from chosen entries (`..`, symlinks and hard links at the sentinel, whiteouts and opaque markers through them). The target and its properties live in
//! `nodeless_sandbox_node::image::fuzz::layer_entries`, which the crate's `tests/fuzz_props.rs` also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_sandbox_node::image::fuzz::layer_entries(data));
