//! An interactive exec: the helper process with its stdio either on a pseudo-terminal the
//! agent allocated (the agent keeps the master side) or on pipes.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;

use super::sys;

/// The running helper and its stdio.
pub struct ExecProcess {
    /// The helper (it waits for the command and records the result).
    pub child: tokio::process::Child,
    /// The terminal's master side, when on a terminal.
    pub terminal: Option<Terminal>,
    pub(crate) dir: PathBuf,
    pub(crate) result_file: PathBuf,
}

impl ExecProcess {
    pub(crate) fn tty(
        child: tokio::process::Child,
        master: OwnedFd,
        dir: PathBuf,
        result_file: PathBuf,
    ) -> std::io::Result<Self> {
        Ok(ExecProcess {
            child,
            terminal: Some(Terminal::new(master)?),
            dir,
            result_file,
        })
    }

    pub(crate) fn pipes(child: tokio::process::Child, dir: PathBuf, result_file: PathBuf) -> Self {
        ExecProcess {
            child,
            terminal: None,
            dir,
            result_file,
        }
    }
}

/// Longest an exec helper may take to hand over its terminal.
const TERMINAL_HANDOVER: std::time::Duration = std::time::Duration::from_secs(10);

/// The terminal's master an exec helper sends over `channel` once it has opened the
/// terminal inside the container; the error says why there is none.
pub fn receive_terminal(channel: &std::os::fd::OwnedFd) -> Result<std::os::fd::OwnedFd, String> {
    use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
    use nix::sys::time::TimeVal;
    let limit = TimeVal::new(TERMINAL_HANDOVER.as_secs() as i64, 0);
    setsockopt(channel, ReceiveTimeout, &limit)
        .map_err(|e| format!("waiting for the exec's terminal: {e}"))?;
    match hutch_supervisor::sys::recv_fd(std::os::fd::AsFd::as_fd(channel)) {
        Ok(Some(master)) => Ok(master),
        Ok(None) => Err(
            "the exec ended before it opened its terminal in the container (see the agent's log)"
                .into(),
        ),
        Err(e) => Err(format!("waiting for the exec's terminal: {e}")),
    }
}

/// The master side of a session's terminal, readable and writable from async code (and
/// from two tasks at once: one reads, one writes).
#[derive(Clone)]
pub struct Terminal {
    fd: Arc<AsyncFd<OwnedFd>>,
}

impl Terminal {
    fn new(master: OwnedFd) -> std::io::Result<Self> {
        let flags = fcntl(&master, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
        fcntl(
            &master,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(std::io::Error::from)?;
        Ok(Terminal {
            fd: Arc::new(sys::async_fd(
                master,
                tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
            )?),
        })
    }

    /// Reads what the session wrote; 0 once it has ended (the kernel answers EIO when the
    /// last slave side is closed).
    pub async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(std::io::Error::from))
            {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` to the session's input.
    pub async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| {
                nix::unistd::write(fd.get_ref().as_fd(), data).map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Tells the session its terminal's new size (it gets SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) -> std::io::Result<()> {
        sys::set_window_size(self.fd.get_ref().as_fd(), rows, cols).map_err(std::io::Error::from)
    }
}
