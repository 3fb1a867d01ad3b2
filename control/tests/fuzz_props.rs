//! The request-body and patch fuzz targets ([`nodeless_control::patch::fuzz`]) as bounded
//! property tests on the stable toolchain: the same functions `cargo +nightly fuzz run`
//! drives, on a fixed number of seeded inputs, with every input that once broke a property
//! kept as a seed.

#[path = "../../fuzz/stable.rs"]
mod stable;

use nodeless_control::patch::fuzz;

#[test]
fn body() {
    // The first byte picks the media type: 0 JSON, 1 YAML, 5 apply (YAML).
    let seeds: [&[u8]; 6] = [
        b"\x00{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"p\"},\"spec\":{\"containers\":[{\"name\":\"a\",\"image\":\"x\"}]}}",
        b"\x01apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: \"1\"\n",
        b"\x05a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n",
        b"\x02[{\"op\":\"add\",\"path\":\"/a\",\"value\":1}]",
        b"\x01--- !!binary aGk=\n",
        b"\x00[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    ];
    stable::run("api_body", 10000, 512, &seeds, fuzz::body);
}

#[test]
fn json_patch() {
    stable::run("patch_json", 20000, 96, &[], fuzz::json);
}

#[test]
fn merge_patch() {
    stable::run("patch_merge", 20000, 64, &[], fuzz::merge);
}

#[test]
fn strategic_merge_patch() {
    stable::run("patch_strategic", 20000, 96, &[], fuzz::strategic);
}
