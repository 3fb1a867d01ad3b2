//! libfuzzer entry for `h1_chunked_encode`: a well-formed chunked body: decoded to its data, ending exactly where it ends. The target and its properties live in
//! `nodeless_ingress_l7::wire::fuzz::chunked_encode`, which the crate's `tests/fuzz_props.rs` also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_ingress_l7::wire::fuzz::chunked_encode(data));
