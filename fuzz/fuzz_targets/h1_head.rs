//! libfuzzer entry for `h1_head`: an HTTP/1.1 request head: refused with a 4xx, handed over, or forwarded with a head that parses again. The target and its properties live in
//! `nodeless_ingress_l7::front::h1::fuzz::head`, which the crate's `tests/fuzz_props.rs` also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_ingress_l7::front::h1::fuzz::head(data));
