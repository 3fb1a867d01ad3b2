//! libfuzzer entry for `dns_packet`: a DNS packet through the UDP path: FORMERR header, kept-answer key, hickory's decoding, the answer and its patched copy. The target and its properties live in
//! `nodeless_dns::fuzz::packet`, which the crate's `tests/fuzz_props.rs` also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_dns::fuzz::packet(data));
