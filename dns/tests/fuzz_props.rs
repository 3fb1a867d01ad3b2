//! The DNS fuzz targets ([`nodeless_dns::fuzz`]) as bounded property tests on the stable
//! toolchain: the same functions `cargo +nightly fuzz run` drives, on a fixed number of seeded
//! inputs, with every input that once broke a property kept as a seed.

#[path = "../../fuzz/stable.rs"]
mod stable;

use nodeless_dns::fuzz;
use nodeless_dns::fuzz::query_packet as query;

#[test]
fn packet() {
    let seeds = [
        query(1, &["web", "default", "svc", "cluster", "local"]),
        query(2, &["DB", "default", "svc", "Cluster", "local"]),
        query(3, &["10-0-0-5", "default", "pod", "cluster", "local"]),
        query(4, &["example", "com"]),
        query(5, &["nope", "default", "svc", "cluster", "local"]),
    ];
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    stable::run("dns_packet", 30000, 512, &seeds, fuzz::packet);
}

#[test]
fn query_fields() {
    stable::run("dns_query", 30000, 48, &[], fuzz::query);
}
