//! Fuzz targets for the image parsers, the bytes a hostile image controls: a layer's tar stream
//! (raw, and built from choices so that `..`, symlinks, hard links and `.wh.` entries reach the
//! unpacker in any order) and a `docker save` archive's manifest and config. `fuzz/` runs them
//! under libfuzzer and each crate's `tests/fuzz_props.rs` on stable; both panic when a property
//! fails, not only when the parser does.
//!
//! Every target unpacks into a fresh temporary directory beside a sentinel directory and the
//! sentinel file a symlink would most likely be aimed at: whatever the input, nothing outside
//! the layer (or the store) may change.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use super::unpack::{MAX_UNPACKED_LAYER, unpack_layer};
use super::{ImageError, ImageStore};

const KEEP: &str = "keep";
const KEEP_TEXT: &[u8] = b"the node's own file\n";

/// Reads an input as a stream of choices; past its end every choice is 0.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    fn pick<'v, T: ?Sized>(&mut self, from: &[&'v T]) -> &'v T {
        from[self.below(from.len())]
    }

    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// A directory holding `layer/` (or a store) and `sentinel/keep`, removed when dropped.
struct Sandbox {
    dir: PathBuf,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = std::env::temp_dir().join(format!(
            "nodeless-fuzz-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir(&dir).expect("a temporary directory");
        let sandbox = Sandbox { dir };
        std::fs::create_dir(sandbox.sentinel()).unwrap();
        std::fs::write(sandbox.sentinel().join(KEEP), KEEP_TEXT).unwrap();
        sandbox
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    fn sentinel(&self) -> PathBuf {
        self.path().join("sentinel")
    }

    /// The sentinel holds its one file, unchanged, and the sandbox nothing but `expected`.
    fn assert_untouched(&self, expected: &[&str]) {
        let names = |p: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names(&self.sentinel()),
            [KEEP],
            "something was made in the sentinel directory"
        );
        let keep = self.sentinel().join(KEEP);
        let meta = std::fs::symlink_metadata(&keep).unwrap();
        assert!(meta.file_type().is_file(), "the sentinel file was replaced");
        assert_eq!(
            std::fs::read(&keep).unwrap(),
            KEEP_TEXT,
            "the sentinel file was written"
        );
        assert!(
            xattr::get(self.sentinel(), "trusted.overlay.opaque").unwrap().is_none(),
            "the sentinel was marked opaque"
        );
        let mut want: Vec<String> = expected
            .iter()
            .map(|s| s.to_string())
            .chain(["sentinel".to_string()])
            .collect();
        want.sort();
        assert_eq!(names(self.path()), want, "something was made beside the layer");
    }
}

/// What an unpack may end in: a diff ID, or an error naming the layer as corrupt (or the
/// disk, for a name the filesystem refuses).
fn check_unpack(result: &Result<String, ImageError>) {
    match result {
        Ok(id) => assert!(id.starts_with("sha256:") && id.len() == 71, "diff ID {id:?}"),
        Err(ImageError::Corrupt(_) | ImageError::Io { .. }) => {}
        Err(e) => panic!("an unpack failed with an unexpected error: {e}"),
    }
}

/// A layer's raw tar stream.
pub fn layer_raw(data: &[u8]) {
    let sandbox = Sandbox::new();
    let dst = sandbox.path().join("layer");
    std::fs::create_dir(&dst).unwrap();
    check_unpack(&unpack_layer(Box::new(Cursor::new(data.to_vec())), &dst, 1 << 20));
    sandbox.assert_untouched(&["layer"]);
}

/// A name for an entry: one to three parts, any of which may climb, hide or name the sentinel.
fn entry_path(c: &mut Choices<'_>) -> String {
    const PARTS: [&str; 14] = [
        "a",
        "b",
        "etc",
        "..",
        ".",
        "",
        ".wh.a",
        ".wh.b",
        ".wh..wh..opq",
        ".wh.",
        ".wh...",
        ".wh.keep",
        KEEP,
        "sentinel",
    ];
    let mut p = String::new();
    if c.below(8) == 0 {
        p.push('/');
    }
    for i in 0..1 + c.below(3) {
        if i > 0 {
            p.push('/');
        }
        p.push_str(c.pick(&PARTS));
    }
    if c.below(6) == 0 {
        p.push('/');
    }
    p
}

/// The tar stream of up to eight entries chosen by `data`. Names are written into the header
/// as they are: `tar::Builder` would refuse `..`, and a hostile image does not use it.
fn chosen_layer(data: &[u8], sentinel: &Path) -> Vec<u8> {
    let mut c = Choices(data);
    let abs = sentinel.display().to_string();
    let abs_keep = sentinel.join(KEEP).display().to_string();
    let targets: [&str; 9] = [
        "a",
        "..",
        "../..",
        "../sentinel",
        "../../sentinel/keep",
        "/",
        &abs,
        &abs_keep,
        "a/b",
    ];
    let mut out = tar::Builder::new(Vec::new());
    let mut n = 0;
    while !c.done() && n < 8 {
        n += 1;
        let path = entry_path(&mut c);
        let mut h = tar::Header::new_gnu();
        let kind = [
            tar::EntryType::Regular,
            tar::EntryType::Directory,
            tar::EntryType::Symlink,
            tar::EntryType::Link,
            tar::EntryType::Char,
            tar::EntryType::Fifo,
        ][c.below(6)];
        h.set_entry_type(kind);
        h.set_mode([0o644, 0o755, 0o4755, 0o000][c.below(4)]);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        let name = path.as_bytes();
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            let target = c.pick(&targets).as_bytes();
            gnu.linkname[..target.len().min(100)].copy_from_slice(&target[..target.len().min(100)]);
        }
        let body: Vec<u8> = if kind == tar::EntryType::Regular {
            vec![b'x'; c.below(4) * 100]
        } else {
            Vec::new()
        };
        h.set_size(body.len() as u64);
        h.set_cksum();
        out.append(&h, body.as_slice()).unwrap();
    }
    out.into_inner().unwrap()
}

/// A layer built from choices: names that climb, symlinks and hard links at the sentinel, then
/// entries, whiteouts and opaque markers through them.
pub fn layer_entries(data: &[u8]) {
    let sandbox = Sandbox::new();
    let dst = sandbox.path().join("layer");
    std::fs::create_dir(&dst).unwrap();
    let tar = chosen_layer(data, &sandbox.sentinel());
    check_unpack(&unpack_layer(Box::new(Cursor::new(tar)), &dst, MAX_UNPACKED_LAYER));
    sandbox.assert_untouched(&["layer"]);
}

/// A path an archive's manifest may name, and whether it stays inside the archive: the
/// archive's own files (one through a link inside it, as `docker save` writes), paths that climb
/// or are absolute, and links in the archive to copies of its files outside it (so that only
/// following such a link could make the import succeed).
fn archive_path(c: &mut Choices<'_>, sentinel: &Path) -> (String, bool) {
    match c.below(11) {
        0 | 1 => ("config.json".into(), true),
        2 | 3 => ("layer.tar".into(), true),
        4 => ("sub/../layer.tar".into(), false),
        5 => ("../sentinel/keep".into(), false),
        6 => (sentinel.join(KEEP).display().to_string(), false),
        7 => ("link-config.json".into(), false),
        8 => ("link-layer.tar".into(), false),
        9 => ("outside-dir/layer.tar".into(), false),
        _ => match c.below(3) {
            0 => ("./config.json".into(), true),
            1 => ("inner-link.tar".into(), true),
            _ => ("fifo".into(), false),
        },
    }
}

/// A diff ID: the layer's own, or one that is well formed only by its length.
fn diff_id(c: &mut Choices<'_>, real: &str) -> String {
    match c.below(5) {
        0 | 1 => real.to_string(),
        2 => format!("sha256:{}", "../".repeat(20) + "tmp/"),
        3 => format!("sha256:{}", "0".repeat(64)),
        _ => format!("sha256:{}", "../".repeat(21) + "x"),
    }
}

/// A `docker save` archive whose manifest and config are chosen by `data`, imported into a
/// store: an import that succeeds names only layers it unpacked into the store, and one whose
/// manifest names a path outside the archive, a link out of it or a FIFO fails.
pub fn docker_archive(data: &[u8]) {
    let sandbox = Sandbox::new();
    let (src, store_dir) = (sandbox.path().join("archive"), sandbox.path().join("store"));
    std::fs::create_dir(&src).unwrap();
    let layer = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "f", &b"hi"[..]).unwrap();
        b.into_inner().unwrap()
    };
    std::fs::write(src.join("layer.tar"), &layer).unwrap();
    let outside = sandbox.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("layer.tar"), &layer).unwrap();
    std::os::unix::fs::symlink(outside.join("config.json"), src.join("link-config.json")).unwrap();
    std::os::unix::fs::symlink("../outside/layer.tar", src.join("link-layer.tar")).unwrap();
    std::os::unix::fs::symlink(&outside, src.join("outside-dir")).unwrap();
    std::os::unix::fs::symlink("layer.tar", src.join("inner-link.tar")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let real = {
        use sha2::Digest;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&layer)))
    };
    let mut c = Choices(data);
    let mut must_fail = false;
    let (config_path, inside) = archive_path(&mut c, &sandbox.sentinel());
    must_fail |= !inside;
    let mut layers = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..c.below(3) {
        let (p, inside) = archive_path(&mut c, &sandbox.sentinel());
        must_fail |= !inside;
        layers.push(p);
        ids.push(diff_id(&mut c, &real));
    }
    if c.below(4) == 0 {
        ids.push(real.clone());
    }
    let user = ["", "0", "../x"][c.below(3)];
    let config =
        serde_json::json!({"config": {"Cmd": ["sh"], "User": user}, "rootfs": {"type": "layers", "diff_ids": ids}});
    std::fs::write(src.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    std::fs::write(outside.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    let tag = ["x:1", "", "a/../b", "UPPER:x"][c.below(4)];
    let manifest = serde_json::json!([{"Config": config_path, "RepoTags": [tag], "Layers": layers}]);
    std::fs::write(src.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let store = ImageStore::open(&store_dir).unwrap();
    match store.import(&src, None) {
        Ok(records) => {
            assert!(
                !must_fail,
                "an archive naming a path outside itself was imported: {manifest}"
            );
            let layers_dir = store_dir.join("layers").canonicalize().unwrap();
            for l in records.iter().flat_map(|r| &r.layers) {
                let hex = l.strip_prefix("sha256:").unwrap_or_default();
                assert!(
                    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                    "a record names the layer {l:?}"
                );
                let dir = store.layer_dir(l).canonicalize().unwrap();
                assert_eq!(
                    dir.parent(),
                    Some(layers_dir.as_path()),
                    "layer {l:?} is outside the store"
                );
            }
        }
        Err(ImageError::Corrupt(_) | ImageError::Unsupported(_) | ImageError::Io { .. }) => {}
        Err(e) => panic!("an import failed with an unexpected error: {e}"),
    }
    sandbox.assert_untouched(&["archive", "outside", "store"]);
}
