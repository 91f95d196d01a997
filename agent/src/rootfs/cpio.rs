//! Splits an initramfs image into its segments.
//!
//! The kernel accepts an initramfs made of several concatenated archives; Debian's
//! `initrd.img` typically starts with an uncompressed `newc` cpio (CPU microcode) followed by
//! one compressed cpio with the real root. The tutorial's `gzip -dc initrd.img | cpio -id`
//! only works when the whole file is one gzip stream; hutch walks the uncompressed `newc`
//! headers to find where each segment ends and what follows, so every kind extracts.

use std::io::{self, Read, Seek, SeekFrom};

/// Size of a `newc` header.
const NEWC_HEADER_LEN: usize = 110;

/// Compression of a compressed segment, recognised by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
    /// bzip2 (`BZh`).
    Bzip2,
}

impl Compression {
    /// The command that decompresses this format from stdin to stdout.
    pub fn decompressor(self) -> &'static [&'static str] {
        match self {
            Compression::Gzip => &["gzip", "-dc"],
            Compression::Zstd => &["zstd", "-dcq"],
            Compression::Xz => &["xz", "-dc"],
            Compression::Bzip2 => &["bzip2", "-dc"],
        }
    }

    /// Recognises a compressed stream from its first bytes.
    pub fn from_magic(magic: &[u8]) -> Option<Compression> {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Compression::Xz)
        } else if magic.starts_with(b"BZh") {
            Some(Compression::Bzip2)
        } else {
            None
        }
    }
}

/// One archive inside an initramfs image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// An uncompressed `newc` cpio archive occupying `start..end`.
    Cpio {
        /// Offset of its first header.
        start: u64,
        /// Offset just past its trailer.
        end: u64,
    },
    /// A compressed archive from `start` to the end of the file.
    Compressed {
        /// Offset of its magic bytes.
        start: u64,
        /// Its compression.
        compression: Compression,
    },
}

/// Why an image could not be split.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// Reading the image failed.
    #[error("reading the initramfs: {0}")]
    Io(#[from] io::Error),
    /// The bytes at `offset` are neither a cpio header nor a known compression.
    #[error("not an initramfs: unknown data at byte {offset} (expected a newc cpio archive or gzip/zstd/xz/bzip2 data)")]
    UnknownFormat {
        /// Where the unknown data starts.
        offset: u64,
    },
    /// A header field is not hexadecimal or the archive ends early.
    #[error("corrupt cpio archive at byte {offset}: {reason}")]
    Corrupt {
        /// Offset of the bad header.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

fn align4(n: u64) -> u64 {
    (n + 3) & !3
}

fn hex_field(header: &[u8], index: usize, offset: u64) -> Result<u64, CpioError> {
    let start = 6 + index * 8;
    let text = std::str::from_utf8(&header[start..start + 8]).map_err(|_| CpioError::Corrupt {
        offset,
        reason: "header field is not text".into(),
    })?;
    u64::from_str_radix(text, 16).map_err(|_| CpioError::Corrupt {
        offset,
        reason: format!("header field {text:?} is not hexadecimal"),
    })
}

/// Walks one `newc` archive starting at `start`; returns the offset just past its trailer.
fn walk_newc<R: Read + Seek>(r: &mut R, start: u64) -> Result<u64, CpioError> {
    let mut pos = start;
    loop {
        r.seek(SeekFrom::Start(pos))?;
        let mut header = [0u8; NEWC_HEADER_LEN];
        r.read_exact(&mut header).map_err(|_| CpioError::Corrupt {
            offset: pos,
            reason: "archive ends inside a header (no TRAILER!!!)".into(),
        })?;
        if &header[..6] != b"070701" && &header[..6] != b"070702" {
            return Err(CpioError::Corrupt {
                offset: pos,
                reason: "bad header magic".into(),
            });
        }
        let file_size = hex_field(&header, 6, pos)?;
        let name_size = hex_field(&header, 11, pos)?;
        let mut name = vec![0u8; name_size as usize];
        r.read_exact(&mut name).map_err(|_| CpioError::Corrupt {
            offset: pos,
            reason: "archive ends inside a file name".into(),
        })?;
        let data_start = align4(pos + NEWC_HEADER_LEN as u64 + name_size);
        pos = align4(data_start + file_size);
        if name.strip_suffix(&[0]).unwrap_or(&name) == b"TRAILER!!!" {
            return Ok(pos);
        }
    }
}

/// Splits the image read by `r` into its segments, in order.
pub fn split_initramfs<R: Read + Seek>(r: &mut R) -> Result<Vec<Segment>, CpioError> {
    let len = r.seek(SeekFrom::End(0))?;
    let mut segments = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        // Archives are padded with zeros (often to 512 bytes) between segments.
        r.seek(SeekFrom::Start(pos))?;
        let mut byte = [0u8; 1];
        r.read_exact(&mut byte)?;
        if byte[0] == 0 {
            pos += 1;
            continue;
        }
        r.seek(SeekFrom::Start(pos))?;
        let mut magic = [0u8; 6];
        let n = r.read(&mut magic)?;
        let magic = &magic[..n];
        if magic == b"070701" || magic == b"070702" {
            let end = walk_newc(r, pos)?;
            segments.push(Segment::Cpio { start: pos, end });
            pos = end;
        } else if let Some(compression) = Compression::from_magic(magic) {
            segments.push(Segment::Compressed {
                start: pos,
                compression,
            });
            break;
        } else {
            return Err(CpioError::UnknownFormat { offset: pos });
        }
    }
    if segments.is_empty() {
        return Err(CpioError::UnknownFormat { offset: 0 });
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn newc_entry(name: &str, data: &[u8]) -> Vec<u8> {
        let name_size = name.len() + 1;
        let mut out =
            format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            1, 0o100644, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, name_size, 0
        )
            .into_bytes();
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, d) in files {
            out.extend(newc_entry(n, d));
        }
        out.extend(newc_entry("TRAILER!!!", b""));
        out
    }

    #[test]
    fn single_uncompressed_archive() {
        let a = archive(&[("hello", b"world!")]);
        let len = a.len() as u64;
        let segs = split_initramfs(&mut Cursor::new(a)).expect("split");
        assert_eq!(segs, vec![Segment::Cpio { start: 0, end: len }]);
    }

    #[test]
    fn early_cpio_then_gzip() {
        let mut img = archive(&[("kernel/x86/microcode/GenuineIntel.bin", b"ucode")]);
        let early_end = img.len() as u64;
        img.resize(512, 0);
        img.extend_from_slice(&[0x1f, 0x8b, 8, 0, 1, 2, 3]);
        let segs = split_initramfs(&mut Cursor::new(img)).expect("split");
        assert_eq!(
            segs,
            vec![
                Segment::Cpio {
                    start: 0,
                    end: early_end
                },
                Segment::Compressed {
                    start: 512,
                    compression: Compression::Gzip
                }
            ]
        );
    }

    #[test]
    fn pure_zstd() {
        let segs =
            split_initramfs(&mut Cursor::new(vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0])).expect("split");
        assert_eq!(
            segs,
            vec![Segment::Compressed {
                start: 0,
                compression: Compression::Zstd
            }]
        );
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(
            split_initramfs(&mut Cursor::new(b"not an archive".to_vec())),
            Err(CpioError::UnknownFormat { offset: 0 })
        ));
        assert!(matches!(
            split_initramfs(&mut Cursor::new(Vec::new())),
            Err(CpioError::UnknownFormat { .. })
        ));
        let mut truncated = archive(&[("a", b"b")]);
        truncated.truncate(truncated.len() - 20);
        assert!(matches!(
            split_initramfs(&mut Cursor::new(truncated)),
            Err(CpioError::Corrupt { .. })
        ));
    }
}
