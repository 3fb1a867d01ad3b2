//! libfuzzer entry for `h1_chunked`: a chunked body scanned whole and in pieces: the same verdict, end and data. The target and its properties live in
//! `nodeless_ingress_l7::wire::fuzz::chunked`, which the crate's `tests/fuzz_props.rs` also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_ingress_l7::wire::fuzz::chunked(data));
