//! `ExecSession`: an interactive exec over one bidirectional stream. The first message starts
//! the command (on a pseudo-terminal, or on pipes); then stdin bytes, resizes and the end of
//! stdin flow in, output flows out, and the last message says how the command ended.
//!
//! When the client goes away, stdin is closed; on a terminal the master side is closed too,
//! so the session gets SIGHUP, as a shell does when its terminal window closes.

use std::sync::Arc;

use hutch_proto::v1;
use hutch_proto::v1::exec_session_input::Input;
use hutch_proto::v1::exec_session_output::Output;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::status::invalid;
use super::{AgentCore, RpcStream, STREAM_BUFFER};
use crate::runtime::session::{ExecProcess, Terminal};

/// Terminal size when the client gives none.
const DEFAULT_SIZE: (u16, u16) = (24, 80);
/// End of file on a terminal (Ctrl-D).
const EOT: u8 = 4;

type Sender = mpsc::Sender<Result<v1::ExecSessionOutput, Status>>;

fn size_of(size: Option<v1::TerminalSize>) -> (u16, u16) {
    match size {
        Some(s) if s.rows > 0 && s.cols > 0 => (
            u16::try_from(s.rows).unwrap_or(u16::MAX),
            u16::try_from(s.cols).unwrap_or(u16::MAX),
        ),
        _ => DEFAULT_SIZE,
    }
}

fn output(o: Output) -> Result<v1::ExecSessionOutput, Status> {
    Ok(v1::ExecSessionOutput { output: Some(o) })
}

/// The stream's first message, which must be `start`.
async fn first_start(
    inbound: &mut Streaming<v1::ExecSessionInput>,
) -> Result<v1::ExecSessionStart, Status> {
    let first = inbound
        .message()
        .await?
        .ok_or_else(|| invalid("input", "the stream is empty: send start first"))?;
    match first.input {
        Some(Input::Start(start)) => Ok(start),
        _ => Err(invalid(
            "input",
            "the first message must be start {id, command, tty, size}",
        )),
    }
}

/// Starts the session described by the stream's first message.
pub async fn start(
    core: Arc<AgentCore>,
    mut inbound: Streaming<v1::ExecSessionInput>,
) -> Result<RpcStream<v1::ExecSessionOutput>, Status> {
    let start = first_start(&mut inbound).await?;
    let tty = start.tty.then(|| size_of(start.size));
    let id = start.id.clone();
    let span =
        tracing::info_span!("exec_session", node = %core.node, container = %id, tty = start.tty);
    let _entered = span.enter();
    let mut process = core
        .runtime
        .exec_session(&id, start.command, tty, &start.term)?;
    tracing::info!("session started");
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    match process.terminal.clone() {
        Some(terminal) => {
            tokio::spawn(feed_terminal(inbound, terminal.clone()));
            tokio::spawn(async move {
                relay_terminal(&terminal, &tx).await;
                drop(terminal);
                finish(&core, &id, &mut process, &tx).await;
            });
        }
        None => {
            let stdin = process.child.stdin.take();
            let stdout = process.child.stdout.take();
            let stderr = process.child.stderr.take();
            tokio::spawn(feed_pipe(inbound, stdin));
            tokio::spawn(async move {
                tokio::join!(
                    relay_pipe(stdout, &tx, Output::Stdout),
                    relay_pipe(stderr, &tx, Output::Stderr)
                );
                finish(&core, &id, &mut process, &tx).await;
            });
        }
    }
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Client input to the terminal, until the client is done.
async fn feed_terminal(mut inbound: Streaming<v1::ExecSessionInput>, terminal: Terminal) {
    while let Ok(Some(msg)) = inbound.message().await {
        let done = match msg.input {
            Some(Input::Stdin(bytes)) => terminal.write_all(&bytes).await.is_err(),
            Some(Input::Resize(size)) => {
                let (rows, cols) = size_of(Some(size));
                terminal.resize(rows, cols).is_err()
            }
            Some(Input::CloseStdin(true)) => terminal.write_all(&[EOT]).await.is_err(),
            _ => false,
        };
        if done {
            return;
        }
    }
}

/// Client input to the command's stdin pipe; closing stdin (or the client leaving) closes it.
async fn feed_pipe(
    mut inbound: Streaming<v1::ExecSessionInput>,
    mut stdin: Option<tokio::process::ChildStdin>,
) {
    while let Ok(Some(msg)) = inbound.message().await {
        match msg.input {
            Some(Input::Stdin(bytes)) => {
                let written = match stdin.as_mut() {
                    Some(s) => s.write_all(&bytes).await.is_ok(),
                    None => false,
                };
                if !written {
                    stdin = None;
                }
            }
            Some(Input::CloseStdin(true)) => stdin = None,
            _ => {}
        }
    }
}

/// The terminal's output to the client, until the session ends or the client leaves.
async fn relay_terminal(terminal: &Terminal, tx: &Sender) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match terminal.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx
                    .send(output(Output::Stdout(buf[..n].to_vec())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// One output pipe to the client.
async fn relay_pipe<R: tokio::io::AsyncRead + Unpin>(
    pipe: Option<R>,
    tx: &Sender,
    wrap: fn(Vec<u8>) -> Output,
) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                // A client that left still has the pipe drained, so the command never blocks.
                let _ = tx.send(output(wrap(buf[..n].to_vec()))).await;
            }
        }
    }
}

/// Waits for the command and sends how it ended (or why it could not run).
async fn finish(core: &AgentCore, id: &str, process: &mut ExecProcess, tx: &Sender) {
    let last = match core.runtime.finish_session(id, process).await {
        Ok(result) => output(Output::Exit(v1::ExecExit {
            exit_code: result.exit_code,
            signal: result.signal,
        })),
        Err(e) => Err(Status::from(e)),
    };
    tracing::info!(container = %id, "session ended: {last:?}");
    let _ = tx.send(last).await;
}

/// Attaches to the terminal of the container named by the stream's first message.
pub async fn attach(
    core: Arc<AgentCore>,
    mut inbound: Streaming<v1::ExecSessionInput>,
) -> Result<RpcStream<v1::ExecSessionOutput>, Status> {
    use crate::runtime::attach::{frame, resize_frame, FRAME_CLOSE, FRAME_INPUT};
    let start = first_start(&mut inbound).await?;
    let id = start.id.clone();
    let socket = core.runtime.attach(&id).await?;
    tracing::info!(node = %core.node, container = %id, "attached");
    let (mut from_container, mut to_container) = socket.into_split();
    if start.size.is_some() {
        let (rows, cols) = size_of(start.size);
        to_container
            .write_all(&resize_frame(rows, cols))
            .await
            .map_err(|e| Status::unavailable(format!("attach: {e}")))?;
    }
    // Client input as frames; the client ending its stream detaches (the socket closes).
    tokio::spawn(async move {
        while let Ok(Some(msg)) = inbound.message().await {
            let bytes = match msg.input {
                Some(Input::Stdin(b)) => frame(FRAME_INPUT, &b),
                Some(Input::Resize(size)) => {
                    let (rows, cols) = size_of(Some(size));
                    resize_frame(rows, cols)
                }
                Some(Input::CloseStdin(true)) => frame(FRAME_CLOSE, &[]),
                _ => continue,
            };
            if to_container.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_container.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send(output(Output::Stdout(buf[..n].to_vec())))
                        .await
                        .is_err()
                    {
                        tracing::info!(container = %id, "detached");
                        return;
                    }
                }
            }
        }
        // The supervisor closed the connection: the container has ended.
        let last = match core.runtime.wait(&id).await {
            Ok(info) => output(Output::Exit(v1::ExecExit {
                exit_code: info.state.exit_code,
                signal: info.state.signal,
            })),
            Err(e) => Err(Status::from(e)),
        };
        let _ = tx.send(last).await;
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}
