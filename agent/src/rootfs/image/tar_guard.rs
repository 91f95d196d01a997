//! A watch over a tar stream as it passes, before the `tar` crate reads it: the crate holds
//! each extension header's data (PAX `x`/`g`, GNU long names `L`/`K`) in memory whole, so a
//! layer could ask for gigabytes with one header; and a layer of millions of empty entries
//! costs an inode and a block each while its bytes stay small. The guard parses each 512-byte
//! header as it goes by, refuses an extension header over [`MAX_EXTENSION_BYTES`] and more
//! entries than the caller allows, and follows PAX `size` records so it stays in step with
//! members larger than the ustar size field holds.

use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;

/// The largest extension header data accepted (a long name, PAX records).
pub const MAX_EXTENSION_BYTES: u64 = 1 << 20;

const BLOCK: usize = 512;

enum State {
    /// Collecting a header block (`filled` bytes so far).
    Header { filled: usize },
    /// Passing a member's data: `left` bytes, then `padding` bytes.
    Data { left: u64, padding: u64 },
}

/// Passes `inner` through unchanged, or fails with what the guard refused (also kept in
/// [`TarGuard::refusal`], since the `tar` crate rewraps the error).
pub struct TarGuard<R> {
    inner: R,
    state: State,
    header: [u8; BLOCK],
    /// PAX records being collected (the data of an `x` header).
    pax: Option<Vec<u8>>,
    /// A PAX `size` for the next member.
    next_size: Option<u64>,
    entries: u64,
    max_entries: u64,
    refusal: Rc<RefCell<Option<String>>>,
}

impl<R: Read> TarGuard<R> {
    /// Watches `inner`, allowing at most `max_entries` members.
    pub fn new(inner: R, max_entries: u64) -> Self {
        TarGuard {
            inner,
            state: State::Header { filled: 0 },
            header: [0; BLOCK],
            pax: None,
            next_size: None,
            entries: 0,
            max_entries,
            refusal: Rc::new(RefCell::new(None)),
        }
    }

    /// What was refused, once something was.
    pub fn refusal(&self) -> Rc<RefCell<Option<String>>> {
        self.refusal.clone()
    }

    /// Members seen so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    fn refuse(&self, why: String) -> io::Error {
        *self.refusal.borrow_mut() = Some(why.clone());
        io::Error::new(io::ErrorKind::InvalidData, why)
    }

    /// A header block is complete: decide what follows it.
    fn on_header(&mut self) -> io::Result<()> {
        if self.header.iter().all(|b| *b == 0) {
            self.state = State::Header { filled: 0 };
            return Ok(());
        }
        let kind = self.header[156];
        let mut size = parse_size(&self.header[124..136])
            .ok_or_else(|| self.refuse("a tar header has no valid size".into()))?;
        let extension = matches!(kind, b'x' | b'g' | b'L' | b'K');
        if extension {
            if size > MAX_EXTENSION_BYTES {
                return Err(self.refuse(format!(
                    "an extension header of {size} bytes (at most {MAX_EXTENSION_BYTES})"
                )));
            }
            if kind == b'x' {
                self.pax = Some(Vec::with_capacity(size as usize));
            }
        } else {
            if let Some(s) = self.next_size.take() {
                size = s;
            }
            self.entries += 1;
            if self.entries > self.max_entries {
                return Err(self.refuse(format!(
                    "more than {} entries (the agent's limit per image)",
                    self.max_entries
                )));
            }
        }
        // Links, directories and devices carry no data whatever their size field says.
        if matches!(kind, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
            size = 0;
        }
        self.state = State::Data {
            left: size,
            padding: (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64,
        };
        self.after_data();
        Ok(())
    }

    /// Data (and padding) done: the PAX records collected say the next member's size.
    fn after_data(&mut self) {
        if let State::Data {
            left: 0,
            padding: 0,
        } = self.state
        {
            if let Some(records) = self.pax.take() {
                self.next_size = pax_size(&records);
            }
            self.state = State::Header { filled: 0 };
        }
    }

    fn watch(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Header { filled } => {
                    let take = (BLOCK - *filled).min(bytes.len());
                    self.header[*filled..*filled + take].copy_from_slice(&bytes[..take]);
                    *filled += take;
                    bytes = &bytes[take..];
                    if *filled == BLOCK {
                        self.on_header()?;
                    }
                }
                State::Data { left, padding } => {
                    if *left > 0 {
                        let take = (*left).min(bytes.len() as u64) as usize;
                        if let Some(pax) = self.pax.as_mut() {
                            pax.extend_from_slice(&bytes[..take]);
                        }
                        *left -= take as u64;
                        bytes = &bytes[take..];
                    } else {
                        let take = (*padding).min(bytes.len() as u64) as usize;
                        *padding -= take as u64;
                        bytes = &bytes[take..];
                    }
                    self.after_data();
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(why) = self.refusal.borrow().clone() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
        }
        let n = self.inner.read(buf)?;
        self.watch(&buf[..n])?;
        Ok(n)
    }
}

/// A ustar size field: octal, or base-256 when its first byte has the high bit.
fn parse_size(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(v);
    }
    let text: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// The `size` record of PAX records (`LEN size=N\n`), if any.
fn pax_size(records: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(records);
    text.lines().find_map(|line| {
        let (_, record) = line.split_once(' ')?;
        record.strip_prefix("size=")?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: u8, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).expect("path");
        h.set_size(size);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn pass(stream: &[u8], max_entries: u64) -> Result<u64, String> {
        let mut guard = TarGuard::new(stream, max_entries);
        let mut sink = Vec::new();
        // Small reads: headers and data arrive cut anywhere.
        let mut buf = [0u8; 37];
        loop {
            match guard.read(&mut buf) {
                Ok(0) => return Ok(guard.entries()),
                Ok(n) => sink.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    #[test]
    fn members_are_counted_and_passed_unchanged() {
        let mut s = header("a", b'0', 700);
        s.extend(vec![7u8; 700 + 324]);
        s.extend(header("d", b'5', 0));
        s.extend(vec![0u8; 1024]);
        assert_eq!(pass(&s, 10), Ok(2));
        assert!(pass(&s, 1)
            .expect_err("limit")
            .contains("more than 1 entries"));
    }

    #[test]
    fn a_huge_extension_header_is_refused_before_it_is_read() {
        let s = header("././@LongLink", b'L', 1 << 30);
        let e = pass(&s, 10).expect_err("huge long name");
        assert!(e.contains("extension header"), "{e}");
    }

    #[test]
    fn a_pax_size_keeps_the_guard_in_step() {
        let record = b"16 size=1000000\n";
        let mut s = header("PaxHeaders/big", b'x', record.len() as u64);
        s.extend_from_slice(record);
        s.extend(vec![0u8; 512 - record.len()]);
        s.extend(header("big", b'0', 0)); // the ustar field cannot say it
        s.extend(vec![1u8; 1_000_000]);
        s.extend(vec![0u8; 512 - 1_000_000 % 512]); // padding to the block
        s.extend(header("after", b'0', 0));
        s.extend(vec![0u8; 1024]);
        assert_eq!(pass(&s, 10), Ok(2));
        assert_eq!(
            parse_size(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Some(256)
        );
    }
}
