//! libfuzzer entry for `h1_head_fields`: an HTTP/1.1 head from chosen fields, checked against the framing rules (Content-Length forms, Transfer-Encoding). The target and its properties live in
//! `nodeless_ingress_l7::front::h1::fuzz::head_fields`, which the crate's `tests/fuzz_props.rs` also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_ingress_l7::front::h1::fuzz::head_fields(data));
