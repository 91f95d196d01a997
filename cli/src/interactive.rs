//! `hutch exec -it`: the local terminal wired to a session in a container. With `-t` the local
//! terminal goes into raw mode (every key, Ctrl-C included, goes to the container) and is
//! restored on every way out: the end of the command, an error, a panic (the guard's `Drop`),
//! or SIGTERM/SIGHUP to the CLI. Window resizes (SIGWINCH) are forwarded.

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;

use hutch::{Error, ExecSession, SessionOutput};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::StreamExt;

/// Puts stdin's terminal in raw mode while alive; restores it when dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Raw mode on stdin, when stdin is a terminal.
    pub fn enable() -> Result<Option<RawMode>, Error> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let saved = termios::tcgetattr(stdin.as_fd())
            .map_err(|e| Error::InvalidInput(format!("reading the terminal's mode: {e}")))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .map_err(|e| Error::InvalidInput(format!("setting raw mode: {e}")))?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// The local terminal's size (rows, columns), 24x80 when unknown.
pub fn terminal_size() -> (u16, u16) {
    terminal_size::terminal_size_of(std::io::stdout())
        .or_else(|| terminal_size::terminal_size_of(std::io::stdin()))
        .map(|(w, h)| (h.0, w.0))
        .unwrap_or((24, 80))
}

/// How an interactive session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The command (or container) ended: exit code and signal.
    Exit(Option<i32>, Option<i32>),
    /// The user detached (Ctrl-P Ctrl-Q); the container keeps running.
    Detached,
    /// Stdout's reader went away (`| head`); the container keeps running.
    OutputClosed,
}

/// Ctrl-P, then Ctrl-Q: detach (as `docker attach` does).
const DETACH: [u8; 2] = [0x10, 0x11];

/// Wires stdin, stdout, stderr and window resizes to `session` until the command ends (or,
/// with `detach_keys`, until the user types Ctrl-P Ctrl-Q).
pub async fn run(
    session: ExecSession,
    tty: bool,
    forward_stdin: bool,
    detach_keys: bool,
) -> Result<Ended, Error> {
    let ExecSessionParts {
        session,
        mut output,
    } = split(session);
    let mut winch = signal(SignalKind::window_change())
        .map_err(|e| Error::InvalidInput(format!("watching window size: {e}")))?;
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Error::InvalidInput(format!("watching SIGTERM: {e}")))?;
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| Error::InvalidInput(format!("watching SIGHUP: {e}")))?;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 4096];
    let mut stdin_open = forward_stdin;
    let mut held: Vec<u8> = Vec::new();
    let mut stderr = std::io::stderr();
    loop {
        tokio::select! {
            item = output.next() => match item {
                Some(Ok(SessionOutput::Stdout(b))) => {
                    if crate::stdout::try_write_streamed(b.to_vec()).await.is_err() {
                        return Ok(Ended::OutputClosed);
                    }
                }
                Some(Ok(SessionOutput::Stderr(b))) => {
                    let _ = stderr.write_all(&b);
                    let _ = stderr.flush();
                }
                Some(Ok(SessionOutput::Exit { exit_code, signal })) => return Ok(Ended::Exit(exit_code, signal)),
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(Error::Status(tonic::Status::unavailable(
                        "the session ended without saying how the command ended",
                    )))
                }
            },
            read = stdin.read(&mut buf), if stdin_open => match read {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    let _ = session.close_stdin().await;
                }
                Ok(n) => {
                    let mut chunk = std::mem::take(&mut held);
                    chunk.extend_from_slice(&buf[..n]);
                    if detach_keys {
                        if let Some(at) = chunk.windows(2).position(|w| w == DETACH) {
                            if at > 0 {
                                let _ = session.stdin(chunk[..at].to_vec()).await;
                            }
                            return Ok(Ended::Detached);
                        }
                        // A Ctrl-P at the very end may be the start of the sequence.
                        if chunk.last() == Some(&DETACH[0]) {
                            chunk.pop();
                            held.push(DETACH[0]);
                        }
                    }
                    if !chunk.is_empty() {
                        let _ = session.stdin(chunk).await;
                    }
                }
            },
            _ = winch.recv(), if tty => {
                let (rows, cols) = terminal_size();
                let _ = session.resize(rows, cols).await;
            }
            _ = term.recv() => return Err(Error::InvalidInput("terminated".into())),
            _ = hup.recv() => return Err(Error::InvalidInput("the terminal went away".into())),
        }
    }
}

/// The session's input side and its output stream, apart.
struct ExecSessionParts {
    session: ExecSession,
    output: hutch::BoxStream<SessionOutput>,
}

fn split(mut session: ExecSession) -> ExecSessionParts {
    let output = std::mem::replace(&mut session.output, Box::pin(tokio_stream::empty()));
    ExecSessionParts { session, output }
}
