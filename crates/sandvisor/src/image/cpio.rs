//! A cpio "newc" archive writer: the format the kernel unpacks an initramfs
//! from (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Written here rather than taken from a crate because the initrd needs
//! exactly three things the format makes simple and the crates make awkward:
//! device nodes without `mknod` on the host, a fixed order, owner and mtime
//! (so that the same inputs give the same bytes), and entries taken from
//! memory rather than from a host tree.

use std::collections::BTreeMap;
use std::io::{self, Write};

const MAGIC: &[u8] = b"070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Permission bits.
        mode: u32,
        /// Its contents.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Where it points.
        target: String,
    },
    /// A character device node.
    CharDev {
        /// Permission bits.
        mode: u32,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

/// An archive being assembled: paths (relative, no leading `/`) to entries.
/// Parents are added as directories when missing; members are written
/// sorted by path, so parents come before children.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `entry` at `path`, replacing what was there, and the missing
    /// parent directories (mode 0755).
    pub fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_matches('/');
        let mut parent = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.entries
                .entry(parent.clone())
                .or_insert(Entry::Dir { mode: 0o755 });
        }
        self.entries.insert(path.to_string(), entry);
    }

    /// Whether `path` is in the archive.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_matches('/'))
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the archive, trailer included.
    ///
    /// # Errors
    /// Those of `out`.
    pub fn write_to<W: Write>(&self, out: &mut W) -> io::Result<()> {
        let mut w = PaddedWriter { out, written: 0 };
        for (ino, (path, entry)) in (1u32..).zip(&self.entries) {
            let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir { mode } => (S_IFDIR | mode, 2, &[], (0, 0)),
                Entry::File { mode, data } => (S_IFREG | mode, 1, data, (0, 0)),
                Entry::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes(), (0, 0)),
                Entry::CharDev { mode, major, minor } => (S_IFCHR | mode, 1, &[], (*major, *minor)),
            };
            w.header(ino, mode, nlink, data.len(), rdev, path)?;
            w.write(data)?;
            w.pad()?;
        }
        w.header(0, 0, 1, 0, (0, 0), TRAILER)?;
        w.pad_to(512)
    }
}

struct PaddedWriter<'a, W: Write> {
    out: &'a mut W,
    written: u64,
}

impl<W: Write> PaddedWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, align: u64) -> io::Result<()> {
        let rem = self.written % align;
        if rem != 0 {
            let zeros = vec![0u8; (align - rem) as usize];
            self.write(&zeros)?;
        }
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        self.pad_to(4)
    }

    fn header(
        &mut self,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: usize,
        (rmajor, rminor): (u32, u32),
        name: &str,
    ) -> io::Result<()> {
        let size = u32::try_from(size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio member over 4 GiB"))?;
        let namesize = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio name too long"))?;
        // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
        // rdevmajor, rdevminor, namesize, check.
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rmajor, rminor, namesize, 0,
        ];
        let mut header = Vec::with_capacity(110);
        header.extend_from_slice(MAGIC);
        for f in fields {
            header.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.write(&header)?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(buf: &[u8]) -> Vec<(String, u32, Vec<u8>, u32, u32)> {
        let mut out = Vec::new();
        let mut pos = 0;
        let field = |b: &[u8], i: usize| {
            u32::from_str_radix(
                std::str::from_utf8(&b[6 + i * 8..6 + i * 8 + 8]).expect("ascii"),
                16,
            )
            .expect("hex")
        };
        loop {
            let h = &buf[pos..pos + 110];
            assert_eq!(&h[..6], MAGIC);
            let mode = field(h, 1);
            let size = field(h, 6) as usize;
            let (rmaj, rmin) = (field(h, 9), field(h, 10));
            let namesize = field(h, 11) as usize;
            let name = std::str::from_utf8(&buf[pos + 110..pos + 110 + namesize - 1])
                .expect("utf8")
                .to_string();
            pos = (pos + 110 + namesize).next_multiple_of(4);
            let data = buf[pos..pos + size].to_vec();
            pos = (pos + size).next_multiple_of(4);
            if name == TRAILER {
                assert_eq!(buf.len() % 512, 0);
                return out;
            }
            out.push((name, mode, data, rmaj, rmin));
        }
    }

    #[test]
    fn writes_parents_first_and_all_kinds() {
        let mut a = Archive::new();
        a.add(
            "bin/sh",
            Entry::Symlink {
                target: "busybox".into(),
            },
        );
        a.add(
            "/init",
            Entry::File {
                mode: 0o755,
                data: b"#!".to_vec(),
            },
        );
        a.add(
            "dev/console",
            Entry::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        );
        let mut buf = Vec::new();
        a.write_to(&mut buf).expect("writes");
        let members = parse(&buf);
        let names: Vec<_> = members.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(names, ["bin", "bin/sh", "dev", "dev/console", "init"]);
        assert_eq!(members[0].1, S_IFDIR | 0o755);
        assert_eq!(members[1].1, S_IFLNK | 0o777);
        assert_eq!(members[1].2, b"busybox");
        assert_eq!(
            (members[3].1, members[3].3, members[3].4),
            (S_IFCHR | 0o600, 5, 1)
        );
        assert_eq!(
            (members[4].1, members[4].2.as_slice()),
            (S_IFREG | 0o755, &b"#!"[..])
        );
    }

    #[test]
    fn same_input_same_bytes() {
        let build = || {
            let mut a = Archive::new();
            a.add(
                "etc/x",
                Entry::File {
                    mode: 0o644,
                    data: vec![1, 2, 3],
                },
            );
            let mut buf = Vec::new();
            a.write_to(&mut buf).expect("writes");
            buf
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn host_cpio_reads_it() {
        let Ok(status) = std::process::Command::new("cpio").arg("--version").output() else {
            return; // cpio(1) is not installed: the parser above covers the format.
        };
        assert!(status.status.success());
        let mut a = Archive::new();
        a.add(
            "a/b/c.txt",
            Entry::File {
                mode: 0o644,
                data: b"hello\n".to_vec(),
            },
        );
        a.add(
            "a/link",
            Entry::Symlink {
                target: "b/c.txt".into(),
            },
        );
        let mut buf = Vec::new();
        a.write_to(&mut buf).expect("writes");
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("cpio runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&buf)
            .expect("write");
        let out = child.wait_with_output().expect("cpio ends");
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .collect::<Vec<_>>(),
            ["a", "a/b", "a/b/c.txt", "a/link"]
        );
    }
}
