//! libfuzzer entry for `image_layer_raw`: a layer's raw tar stream, unpacked beside a sentinel directory that must stay untouched. The target and its properties live in
//! `nodeless_sandbox_node::image::fuzz::layer_raw`, which the crate's `tests/fuzz_props.rs` also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_sandbox_node::image::fuzz::layer_raw(data));
