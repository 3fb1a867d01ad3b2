//! The image fuzz targets ([`nodeless_sandbox_node::image::fuzz`]) as bounded property tests on
//! the stable toolchain: the same functions `cargo +nightly fuzz run` drives, on a fixed number
//! of seeded inputs, with every input that once broke a property kept below as a regression.

#[path = "../../fuzz/stable.rs"]
mod stable;

use nodeless_sandbox_node::image::fuzz;

/// A small valid layer: a directory, a file, a symlink inside it and a whiteout.
fn seed_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "etc/", &[][..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(5);
    b.append_data(&mut h, "etc/motd", &b"hello"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "etc/link", "motd").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    b.append_data(&mut h, "etc/.wh.old", &[][..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn layer_raw() {
    let seed = seed_layer();
    stable::run("image_layer_raw", 600, 4096, &[&seed], fuzz::layer_raw);
}

#[test]
fn layer_entries() {
    // Choices spelling out the attacks, so that every run replays them: a symlink `a`
    // to the sentinel directory, then `a/.wh.keep` (the whiteout that deleted a node file) or
    // `a/.wh..wh..opq`; and a hard link `a` to the sentinel file, then a file `a` written.
    let attacks: [&[u8]; 3] = [
        &[1, 0, 0, 1, 2, 0, 6, 1, 1, 0, 11, 1, 0, 0, 0],
        &[1, 0, 0, 1, 2, 0, 6, 1, 1, 0, 8, 1, 0, 0, 0],
        &[1, 0, 0, 1, 3, 0, 7, 1, 0, 0, 1, 0, 0, 1],
    ];
    stable::run("image_layer_entries", 500, 64, &attacks, fuzz::layer_entries);
}

/// Found by this target: a config whose diff ID was `sha256:` and 64 characters of `../`
/// ending in `tmp/` was imported with the node's `/tmp` as its layer (the store skipped the
/// "already unpacked" layer, and a container would have had it as an overlay lower directory).
const DIFF_ID_CLIMBS: &str = "f59d40a2dab8ace91e35d7096ff7";

/// Found by this target: a manifest naming `link-config.json`, a link in the archive to a file
/// outside it, was imported (the import followed links: `-> /dev/zero` hung it, `-> /etc/...`
/// read a node file, and a FIFO blocked it for good).
const CONFIG_THROUGH_LINK: &str = "6a3cbe1885e77ff272d902af43e95ee486a6bd6e99e80e59d2eae3a550a933d2";

#[test]
fn docker_archive() {
    let regressions = [stable::unhex(DIFF_ID_CLIMBS), stable::unhex(CONFIG_THROUGH_LINK)];
    let seeds: Vec<&[u8]> = regressions.iter().map(Vec::as_slice).collect();
    stable::run("image_docker_archive", 300, 32, &seeds, fuzz::docker_archive);
}
