//! Writing to stdout the way shell tools do. When the reader of a pipe goes away
//! (`hutch ps | head -1`, `hutch logs -f web | grep -m1 ready`), hutch ends at once and
//! quietly with status 141 (128 + SIGPIPE, what a shell reports for `ls` there) instead of
//! panicking or streaming into nowhere. Any other write error ends hutch with its own
//! status, 125, and one line on stderr.

use std::io::Write;

/// Exit status when stdout's reader is gone.
pub const EXIT_BROKEN_PIPE: u8 = 141;

/// Writes `bytes` to stdout and flushes; for callers that must clean up before ending
/// (the terminal's raw mode).
pub fn try_write(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush())
}

/// Writes `bytes` to stdout and flushes, so streamed output appears as it comes.
pub fn write(bytes: &[u8]) {
    if let Err(e) = try_write(bytes) {
        end_on(e);
    }
}

/// [`try_write`] for output that streams for as long as something follows (logs, events,
/// a session's output): the write runs on the blocking pool, so a reader that stops
/// reading (a paused pager) holds this task, not the CLI's one runtime thread, which keeps
/// the connection to the controller served (its keepalive pings answered).
pub async fn try_write_streamed(bytes: Vec<u8>) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || try_write(&bytes))
        .await
        .map_err(std::io::Error::other)?
}

/// [`write`] through [`try_write_streamed`].
pub async fn write_streamed(bytes: Vec<u8>) {
    if let Err(e) = try_write_streamed(bytes).await {
        end_on(e);
    }
}

/// Ends hutch after a failed write to stdout: quietly with 141 when its reader is gone.
fn end_on(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(i32::from(EXIT_BROKEN_PIPE));
    }
    eprintln!("hutch: writing to stdout: {e}");
    std::process::exit(i32::from(crate::EXIT_HUTCH));
}

/// `println!` through [`write`].
macro_rules! outln {
    () => {
        $crate::stdout::write(b"\n")
    };
    ($($arg:tt)*) => {
        $crate::stdout::write(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}

/// `print!` through [`write`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write(format!($($arg)*).as_bytes())
    };
}

pub(crate) use {out, outln};
