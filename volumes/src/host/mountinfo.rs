//! `/proc/self/mountinfo`, parsed: the one place the kernel says what is mounted where and from
//! which device, which is how the driver knows, after a restart too, whether a volume is staged
//! or published (kubelet's mount utilities read the same file).

use std::path::PathBuf;

use super::{DevNum, Mount};

/// Undo mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_line(line: &str) -> Option<Mount> {
    let mut fields = line.split(' ');
    let _id = fields.next()?;
    let _parent = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let root = unescape(fields.next()?);
    let mount_point = PathBuf::from(unescape(fields.next()?));
    let options = fields.next()?;
    // Optional fields up to the separator.
    fields.by_ref().find(|f| *f == "-")?;
    let fs_type = unescape(fields.next()?);
    Some(Mount {
        dev: DevNum {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        },
        root,
        mount_point,
        fs_type,
        read_only: options.split(',').any(|o| o == "ro"),
    })
}

/// Every well-formed line of a mountinfo file, in order.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{DevNum, parse};

    #[test]
    fn lines_give_device_root_mount_point_type_and_read_only() {
        let text = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
36 22 7:3 / /var/lib/kubelet/plugins/staging\\040dir rw,noatime shared:40 master:2 - ext4 /dev/loop3 rw
37 22 7:3 / /pods/a/volumes/target ro,relatime - ext4 /dev/loop3 rw
38 22 0:5 /loop3 /pods/b/block rw,nosuid shared:3 - devtmpfs udev rw,size=10k
garbage
";
        let m = parse(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].dev, DevNum { major: 7, minor: 3 });
        assert_eq!(m[1].mount_point, Path::new("/var/lib/kubelet/plugins/staging dir"));
        assert!(!m[1].read_only);
        assert!(m[2].read_only);
        assert_eq!((m[3].root.as_str(), m[3].fs_type.as_str()), ("/loop3", "devtmpfs"));
    }

    #[test]
    fn escapes_are_undone_and_stray_backslashes_kept() {
        assert_eq!(super::unescape("a\\040b\\134c\\0"), "a b\\c\\0");
    }
}
