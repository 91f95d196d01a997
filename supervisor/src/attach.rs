//! The attach point of a container that runs on a terminal (`tty`): a Unix socket in its
//! state directory (`attach.sock`) on which the supervisor serves clients (the agent's
//! `Attach` calls). Single-threaded and non-blocking, driven by the supervisor's poll loop.
//!
//! Protocol. Supervisor to client: the terminal's output, raw. Client to supervisor: frames
//! of `[kind: u8][length: u32, big-endian][payload]`: kind 0 is input for the terminal,
//! kind 1 a window size (rows: u16, columns: u16, big-endian), kind 2 the end of input
//! (Ctrl-D on the terminal).
//!
//! The output written before the first client attaches (up to [`REPLAY_LIMIT`]) is kept and
//! given to that client, so `hutch run -it` sees the shell's first prompt. A client that
//! falls [`CLIENT_BUFFER_LIMIT`] behind is disconnected; the log keeps everything.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Output kept for the first client.
pub const REPLAY_LIMIT: usize = 64 * 1024;
/// Output buffered for one client before it is dropped as too slow.
pub const CLIENT_BUFFER_LIMIT: usize = 1024 * 1024;

/// Frame kinds, client to supervisor.
pub const FRAME_INPUT: u8 = 0;
/// A window size.
pub const FRAME_RESIZE: u8 = 1;
/// The end of input.
pub const FRAME_CLOSE: u8 = 2;

/// One frame, encoded.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A resize frame.
pub fn resize_frame(rows: u16, cols: u16) -> Vec<u8> {
    let mut p = rows.to_be_bytes().to_vec();
    p.extend_from_slice(&cols.to_be_bytes());
    frame(FRAME_RESIZE, &p)
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Bytes for the terminal.
    Input(Vec<u8>),
    /// A new window size.
    Resize(u16, u16),
    /// The end of input.
    Close,
}

/// Takes the complete frames off the front of `buf`.
pub fn parse_frames(buf: &mut Vec<u8>) -> Vec<Request> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 5 {
        let kind = buf[at];
        let len = u32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]) as usize;
        if buf.len() - at - 5 < len {
            break;
        }
        let payload = &buf[at + 5..at + 5 + len];
        match kind {
            FRAME_INPUT => out.push(Request::Input(payload.to_vec())),
            FRAME_RESIZE if len == 4 => out.push(Request::Resize(
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            )),
            FRAME_CLOSE => out.push(Request::Close),
            _ => {}
        }
        at += 5 + len;
    }
    buf.drain(..at);
    out
}

/// One attached client.
pub struct Client {
    /// Its connection (non-blocking).
    pub stream: UnixStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
}

impl Client {
    /// Whether output waits to be written.
    pub fn wants_write(&self) -> bool {
        !self.outbuf.is_empty()
    }
}

/// The socket and its clients.
pub struct AttachPoint {
    /// The listening socket (non-blocking).
    pub listener: UnixListener,
    /// The attached clients.
    pub clients: Vec<Client>,
    path: PathBuf,
    replay: Option<Vec<u8>>,
}

impl AttachPoint {
    /// Listens on `path` (replacing a stale socket file).
    pub fn bind(path: &Path) -> std::io::Result<AttachPoint> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(AttachPoint {
            listener,
            clients: Vec::new(),
            path: path.to_path_buf(),
            replay: Some(Vec::new()),
        })
    }

    /// Accepts waiting clients; the first one gets the output so far.
    pub fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let outbuf = self.replay.take().unwrap_or_default();
            self.clients.push(Client {
                stream,
                inbuf: Vec::new(),
                outbuf,
            });
        }
        self.flush_all();
    }

    /// Output of the terminal: to every client, and kept for the first one to come.
    pub fn output(&mut self, bytes: &[u8]) {
        if let Some(replay) = self.replay.as_mut() {
            let room = REPLAY_LIMIT.saturating_sub(replay.len());
            replay.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
        for c in &mut self.clients {
            c.outbuf.extend_from_slice(bytes);
        }
        self.clients
            .retain(|c| c.outbuf.len() <= CLIENT_BUFFER_LIMIT);
        self.flush_all();
    }

    /// Writes what each client can take now; drops clients that went away.
    pub fn flush_all(&mut self) {
        self.clients.retain_mut(|c| {
            while !c.outbuf.is_empty() {
                match c.stream.write(&c.outbuf) {
                    Ok(0) => return false,
                    Ok(n) => {
                        c.outbuf.drain(..n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            true
        });
    }

    /// Reads what client `i` sent; returns its requests (it is dropped when it left).
    pub fn read_client(&mut self, i: usize) -> Vec<Request> {
        let Some(c) = self.clients.get_mut(i) else {
            return Vec::new();
        };
        let mut buf = [0u8; 16 * 1024];
        let mut gone = false;
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    gone = true;
                    break;
                }
                Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    gone = true;
                    break;
                }
            }
        }
        let requests = parse_frames(&mut c.inbuf);
        if gone {
            self.clients.remove(i);
        }
        requests
    }
}

impl Drop for AttachPoint {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_wait_for_their_end() {
        let mut buf = frame(FRAME_INPUT, b"ls\n");
        buf.extend(resize_frame(30, 100));
        buf.extend(frame(FRAME_CLOSE, &[]));
        let tail = frame(FRAME_INPUT, b"partial");
        buf.extend_from_slice(&tail[..6]);
        let got = parse_frames(&mut buf);
        assert_eq!(
            got,
            vec![
                Request::Input(b"ls\n".to_vec()),
                Request::Resize(30, 100),
                Request::Close
            ]
        );
        assert_eq!(buf, tail[..6].to_vec());
        buf.extend_from_slice(&tail[6..]);
        assert_eq!(
            parse_frames(&mut buf),
            vec![Request::Input(b"partial".to_vec())]
        );
        assert!(buf.is_empty());
    }
}
