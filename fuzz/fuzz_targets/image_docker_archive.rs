//! libfuzzer entry for `image_docker_archive`: a `docker save` archive's manifest and config: paths out of the archive and diff IDs that climb are refused. The target and its properties live in
//! `nodeless_sandbox_node::image::fuzz::docker_archive`, which the crate's `tests/fuzz_props.rs` also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_sandbox_node::image::fuzz::docker_archive(data));
