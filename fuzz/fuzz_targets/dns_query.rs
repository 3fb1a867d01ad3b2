//! libfuzzer entry for `dns_query`: a DNS query from chosen names, types, classes and EDNS, through the same path. The target and its properties live in
//! `nodeless_dns::fuzz::query`, which the crate's `tests/fuzz_props.rs` also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_dns::fuzz::query(data));
