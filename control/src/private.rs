//! Files only the control plane's own user may read. The data directory holds every object
//! (Secrets included, in the redb file), the cluster CA's key and the tokens; any local user who
//! can read one of them owns the cluster. So every directory the control plane makes is 0700 and
//! every file 0600, and directories and files left by an older version are tightened at start.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Mode of every directory the control plane keeps state in.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every state file.
pub const FILE_MODE: u32 = 0o600;

/// Create `dir` (and missing parents) as 0700, and make it 0700 if it already existed.
pub fn dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
}

/// Make an existing file 0600 (a missing one is left missing).
pub fn file(path: &Path) -> io::Result<()> {
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Write `contents` to `path` as a 0600 file, durably: to a temporary file beside it, synced,
/// then renamed over it, so a crash leaves the old file or the new one, never half of one.
pub fn write(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn directories_are_made_and_tightened_to_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("a/b");
        super::dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        super::dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
    }

    #[test]
    fn files_are_tightened_to_0600_and_missing_ones_are_fine() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        super::file(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        super::file(&tmp.path().join("missing")).unwrap();
    }
}
