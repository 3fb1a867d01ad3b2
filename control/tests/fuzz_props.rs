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
    let seeds: [&[u8]; 7] = [
        b"\x00{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"p\"},\"spec\":{\"containers\":[{\"name\":\"a\",\"image\":\"x\"}]}}",
        b"\x01apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: \"1\"\n",
        b"\x05a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n",
        b"\x02[{\"op\":\"add\",\"path\":\"/a\",\"value\":1}]",
        b"\x01--- !!binary aGk=\n",
        // libFuzzer's find (2026-12-06): a long integer literal decoded one ulp off (JSON patch
        // body, `b` % 6 = 2), so it did not encode and decode to itself.
        b"b222222222222222222222222",
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
    // libFuzzer's find (2026-12-06): an object with a directive appended to finalizers.
    let finding: &[u8] = b"\xa0\xb6\xa0\xdd\xdd\xb6\xb6\xb6W?\nOI?\n\xb6\xb6\xb6W$\n";
    stable::run("patch_strategic", 20000, 96, &[finding], fuzz::strategic);
}
