//! [`Container`]: a handle on one container, with its lifecycle as async calls and its logs
//! and changes as streams.

use hutch_proto::v1::{self, ContainerState};
use tokio_stream::StreamExt;

use crate::client::{BoxStream, Client};
use crate::error::{Error, Result};

/// Whether a state is an end (EXITED, OOM_KILLED, FAILED, LOST).
pub fn is_final(state: i32) -> bool {
    [
        ContainerState::Exited,
        ContainerState::OomKilled,
        ContainerState::Failed,
        ContainerState::Lost,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

/// What an exec printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Signal, when it was killed.
    pub signal: Option<i32>,
}

/// Which lines [`Container::logs_with`] streams (Docker's `logs` flags).
#[derive(Debug, Clone, Default)]
pub struct LogsOptions {
    /// Keep streaming new lines until the container ends.
    pub follow: bool,
    /// Only the last N lines (before following).
    pub tail: Option<u32>,
    /// Only lines written at or after this time.
    pub since: Option<std::time::SystemTime>,
    /// Only lines written at or before this time.
    pub until: Option<std::time::SystemTime>,
    /// The previous run of a restarted container instead of the current one.
    pub previous: bool,
}

/// One container of the cluster.
#[derive(Clone)]
pub struct Container {
    client: Client,
    id: String,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container").field("id", &self.id).finish()
    }
}

impl Container {
    pub(crate) fn new(client: Client, id: &str) -> Self {
        Container {
            client,
            id: id.to_string(),
        }
    }

    /// Its id (= name).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its current record.
    pub async fn info(&self) -> Result<v1::Container> {
        self.client.get(&self.id).await
    }

    /// Its changes from now on (the current record first).
    pub async fn events(&self) -> Result<BoxStream<v1::Container>> {
        let current = self.info().await?;
        let id = self.id.clone();
        let stream = self
            .client
            .watch(current.revision)
            .await?
            .filter_map(move |e| match e {
                Ok(e) => e.container.filter(|c| c.name == id).map(Ok),
                Err(e) => Some(Err(e)),
            });
        Ok(Box::pin(tokio_stream::once(Ok(current)).chain(stream)))
    }

    /// Waits until it has ended (EXITED, OOM_KILLED, FAILED or LOST) and returns the final
    /// record. A restart policy may start it again afterwards.
    pub async fn wait(&self) -> Result<v1::Container> {
        let current = self.info().await?;
        if is_final(current.state) {
            return Ok(current);
        }
        self.wait_since(current.revision).await
    }

    /// Waits for the first end recorded after `revision` (a revision of this container seen
    /// earlier, e.g. its RUNNING record) and returns that record: the controller's event
    /// history replays it, so this works even once an `auto_remove` container is gone.
    pub async fn wait_since(&self, revision: u64) -> Result<v1::Container> {
        let mut events = self.client.watch(revision).await?;
        while let Some(e) = events.next().await {
            let e = e?;
            let removed = e.r#type == v1::WatchEventType::Removed as i32;
            if let Some(c) = e.container.filter(|c| c.name == self.id) {
                if is_final(c.state) {
                    return Ok(c);
                }
                if removed {
                    return Err(Error::Status(tonic::Status::not_found(format!(
                        "container '{}' was removed before it ended",
                        self.id
                    ))));
                }
            }
        }
        Err(Error::Status(tonic::Status::unavailable(format!(
            "the watch of container '{}' ended before it did",
            self.id
        ))))
    }

    /// Its output lines; with `follow`, new lines until it ends.
    pub async fn logs(&self, follow: bool, tail: Option<u32>) -> Result<BoxStream<v1::LogEntry>> {
        self.logs_with(LogsOptions {
            follow,
            tail,
            ..Default::default()
        })
        .await
    }

    /// Its output lines, as `options` narrow them (times, the previous run).
    pub async fn logs_with(&self, options: LogsOptions) -> Result<BoxStream<v1::LogEntry>> {
        let stamp = |t: Option<std::time::SystemTime>| t.map(hutch_core::convert::timestamp);
        let stream = self
            .client
            .rpc()
            .container_logs(v1::ContainerLogsRequest {
                id: self.id.clone(),
                follow: options.follow,
                since: stamp(options.since),
                tail: options.tail,
                until: stamp(options.until),
                previous: options.previous,
            })
            .await?
            .into_inner();
        Ok(Box::pin(stream.map(|r| r.map_err(Error::from))))
    }

    /// Its processes (it must be running), as `docker top` lists them.
    pub async fn processes(&self) -> Result<Vec<v1::ContainerProcess>> {
        Ok(self
            .client
            .rpc()
            .list_processes(v1::ListProcessesRequest {
                id: self.id.clone(),
            })
            .await?
            .into_inner()
            .processes)
    }

    /// Runs a command inside it (joining its namespaces, cgroup and root) and returns what
    /// it printed.
    pub async fn exec<S: Into<String>>(
        &self,
        argv: impl IntoIterator<Item = S>,
    ) -> Result<ExecOutput> {
        let r = self
            .client
            .rpc()
            .exec(v1::ExecRequest {
                id: self.id.clone(),
                command: argv.into_iter().map(Into::into).collect(),
            })
            .await?
            .into_inner();
        Ok(ExecOutput {
            stdout: r.stdout,
            stderr: r.stderr,
            exit_code: r.exit_code,
            signal: r.signal,
        })
    }

    /// SIGTERM, then SIGKILL after `grace_seconds` (the container's own when None); returns
    /// the final record. It is not restarted.
    pub async fn stop(&self, grace_seconds: Option<u32>) -> Result<v1::Container> {
        Ok(self
            .client
            .rpc()
            .stop_container(v1::StopContainerRequest {
                id: self.id.clone(),
                grace_seconds,
            })
            .await?
            .into_inner())
    }

    /// Sends a signal (0 = SIGKILL).
    pub async fn kill(&self, signal: i32) -> Result<()> {
        self.client
            .rpc()
            .kill_container(v1::KillContainerRequest {
                id: self.id.clone(),
                signal,
            })
            .await?;
        Ok(())
    }

    /// Forgets it and removes it from its node (`force`: even while it runs).
    pub async fn remove(&self, force: bool) -> Result<()> {
        self.client
            .rpc()
            .remove_container(v1::RemoveContainerRequest {
                id: self.id.clone(),
                force,
            })
            .await?;
        Ok(())
    }
}

/// What an interactive exec sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutput {
    /// Bytes the command wrote to stdout (or to its terminal).
    Stdout(Vec<u8>),
    /// Bytes the command wrote to stderr (never with a terminal).
    Stderr(Vec<u8>),
    /// How it ended; the last item.
    Exit {
        /// Exit code, when it exited.
        exit_code: Option<i32>,
        /// Signal, when a signal ended it.
        signal: Option<i32>,
    },
}

/// An interactive exec: send input with [`ExecSession::stdin`], [`ExecSession::resize`] and
/// [`ExecSession::close_stdin`]; read [`ExecSession::output`] until [`SessionOutput::Exit`].
pub struct ExecSession {
    input: tokio::sync::mpsc::Sender<v1::ExecSessionInput>,
    /// The command's output, then how it ended.
    pub output: BoxStream<SessionOutput>,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession").finish_non_exhaustive()
    }
}

fn input(i: v1::exec_session_input::Input) -> v1::ExecSessionInput {
    v1::ExecSessionInput { input: Some(i) }
}

impl ExecSession {
    async fn send(&self, i: v1::exec_session_input::Input) -> Result<()> {
        self.input
            .send(input(i))
            .await
            .map_err(|_| Error::Status(tonic::Status::unavailable("the session has ended")))
    }

    /// Sends bytes to the command's stdin.
    pub async fn stdin(&self, bytes: Vec<u8>) -> Result<()> {
        self.send(v1::exec_session_input::Input::Stdin(bytes)).await
    }

    /// Tells the command its terminal's new size.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.send(v1::exec_session_input::Input::Resize(v1::TerminalSize {
            rows: rows.into(),
            cols: cols.into(),
        }))
        .await
    }

    /// Ends the command's stdin (on a terminal: Ctrl-D).
    pub async fn close_stdin(&self) -> Result<()> {
        self.send(v1::exec_session_input::Input::CloseStdin(true))
            .await
    }
}

impl Container {
    /// Starts `argv` inside the container interactively: on a pseudo-terminal of `tty`
    /// (rows, columns), or on pipes when `None`.
    pub async fn exec_session<S: Into<String>>(
        &self,
        argv: impl IntoIterator<Item = S>,
        tty: Option<(u16, u16)>,
    ) -> Result<ExecSession> {
        let start = v1::ExecSessionStart {
            id: self.id.clone(),
            command: argv.into_iter().map(Into::into).collect(),
            tty: tty.is_some(),
            size: tty.map(|(rows, cols)| v1::TerminalSize {
                rows: rows.into(),
                cols: cols.into(),
            }),
            // This program's terminal type, as `docker exec -t` passes it on.
            term: if tty.is_some() {
                std::env::var("TERM").unwrap_or_default()
            } else {
                String::new()
            },
        };
        self.open_session(start, false).await
    }

    /// Attaches to the container's terminal (it was created with `tty`); `size` is the
    /// client's terminal size. Dropping the session detaches; the container keeps running.
    pub async fn attach(&self, size: Option<(u16, u16)>) -> Result<ExecSession> {
        let start = v1::ExecSessionStart {
            id: self.id.clone(),
            command: Vec::new(),
            tty: true,
            size: size.map(|(rows, cols)| v1::TerminalSize {
                rows: rows.into(),
                cols: cols.into(),
            }),
            term: String::new(),
        };
        self.open_session(start, true).await
    }

    async fn open_session(&self, start: v1::ExecSessionStart, attach: bool) -> Result<ExecSession> {
        use v1::exec_session_output::Output;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tx.send(input(v1::exec_session_input::Input::Start(start)))
            .await
            .map_err(|_| Error::InvalidInput("session channel closed".into()))?;
        let inputs = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut rpc = self.client.rpc();
        let stream = if attach {
            rpc.attach(inputs).await?
        } else {
            rpc.exec_session(inputs).await?
        }
        .into_inner();
        let output = stream.filter_map(|item| match item {
            Ok(v1::ExecSessionOutput { output: Some(o) }) => Some(Ok(match o {
                Output::Stdout(b) => SessionOutput::Stdout(b),
                Output::Stderr(b) => SessionOutput::Stderr(b),
                Output::Exit(e) => SessionOutput::Exit {
                    exit_code: e.exit_code,
                    signal: e.signal,
                },
            })),
            Ok(_) => None,
            Err(s) => Some(Err(Error::from(s))),
        });
        Ok(ExecSession {
            input: tx,
            output: Box::pin(output),
        })
    }
}
