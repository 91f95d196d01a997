//! Building one rootfs from its source into a target directory, synchronously (the store runs
//! this on a blocking thread). Each builder is a real tool driven as a child process:
//! `debootstrap`, `tar`, `cp -a`, a decompressor piped into `cpio`. Every line of their output
//! goes to the build log; progress is reported through a callback.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::cpio::{self, Compression, Segment};
use super::progress::{BuildProgress, BuildStage, DebootstrapParser};
use super::source::{ResolvedSource, RootfsSource};
use super::RootfsError;

/// Lines of a failed tool's output quoted in the error message.
const ERROR_TAIL_LINES: usize = 8;
/// Chunk size when feeding archives to a tool.
const CHUNK: usize = 1 << 20;

/// Where build output goes: the on-disk log and the progress callback.
pub struct BuildSink<'a> {
    /// The full build log.
    pub log: &'a mut File,
    /// Receives progress events.
    pub progress: &'a dyn Fn(BuildProgress),
}

impl BuildSink<'_> {
    fn log_line(&mut self, line: &str) {
        let _ = writeln!(self.log, "{line}");
    }
}

fn failed(step: &str, message: impl Into<String>) -> RootfsError {
    RootfsError::BuildFailed {
        step: step.to_string(),
        message: message.into(),
    }
}

/// Builds `source` into `target`, which exists and is empty.
pub fn build_into(
    source: &ResolvedSource,
    target: &Path,
    sink: &mut BuildSink,
) -> Result<(), RootfsError> {
    match &source.source {
        RootfsSource::Debootstrap {
            suite,
            variant,
            include,
            arch,
            mirror,
        } => {
            let mut cmd = Command::new("debootstrap");
            if !variant.is_empty() {
                cmd.arg(format!("--variant={variant}"));
            }
            if !include.is_empty() {
                cmd.arg(format!("--include={}", include.join(",")));
            }
            cmd.arg(format!("--arch={arch}"))
                .arg(suite)
                .arg(target)
                .arg(mirror)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .env("LC_ALL", "C");
            (sink.progress)(BuildProgress::stage(
                BuildStage::Resolving,
                format!("debootstrap {suite} from {mirror}"),
            ));
            let mut parser = DebootstrapParser::new();
            run_logged("debootstrap", cmd, sink, |line, sink| {
                if let Some(p) = parser.feed(line) {
                    (sink.progress)(p);
                }
            })
        }
        RootfsSource::Directory { path } => {
            (sink.progress)(BuildProgress::stage(
                BuildStage::Copying,
                format!("copying {}", path.display()),
            ));
            let mut cmd = Command::new("cp");
            cmd.arg("-a")
                .arg("--reflink=auto")
                .arg(format!("{}/.", path.display()))
                .arg(target);
            run_logged("copy", cmd, sink, |_, _| {})
        }
        RootfsSource::Tarball { path } => extract_tarball(path, target, sink),
        RootfsSource::Initramfs { path } => extract_initramfs(path, target, sink),
        // Images have no tree of their own: the store imports their layers.
        RootfsSource::Image { reference, .. } => Err(failed(
            "image",
            format!("{reference} is an image: its layers are imported, not built into a tree"),
        )),
    }
}

/// Runs `cmd` with stdout and stderr merged into one pipe; each line is logged and passed to
/// `on_line`. A non-zero exit is a [`RootfsError::BuildFailed`] quoting the last lines.
fn run_logged(
    step: &str,
    mut cmd: Command,
    sink: &mut BuildSink,
    mut on_line: impl FnMut(&str, &mut BuildSink),
) -> Result<(), RootfsError> {
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| failed(step, format!("cannot create a pipe: {e}")))?;
    let writer2 = writer
        .try_clone()
        .map_err(|e| failed(step, format!("cannot duplicate a pipe: {e}")))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2));
    let mut child = spawn(step, &mut cmd)?;
    drop(cmd); // closes our copies of the pipe's write end
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(File::from(reader)).lines() {
        let Ok(line) = line else { break };
        sink.log_line(&line);
        on_line(&line, sink);
        tail.push(line);
        if tail.len() > ERROR_TAIL_LINES {
            tail.remove(0);
        }
    }
    let status = child
        .wait()
        .map_err(|e| failed(step, format!("waiting for {step}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(
            step,
            format!("{step} {status}: {}", tail.join(" | ")),
        ))
    }
}

fn spawn(step: &str, cmd: &mut Command) -> Result<Child, RootfsError> {
    cmd.spawn().map_err(|e| {
        failed(
            step,
            format!(
                "cannot start {:?}: {e} (is it installed? the README's setup command installs it)",
                cmd.get_program()
            ),
        )
    })
}

/// Copies `len` bytes of `file` from `start` into `to`, reporting bytes done.
fn feed(
    file: &mut File,
    start: u64,
    len: u64,
    to: &mut impl Write,
    report: &dyn Fn(u64),
) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(start))?;
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let want = CHUNK.min((len - done) as usize);
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n])?;
        done += n as u64;
        report(done);
    }
    Ok(())
}

/// Collects a child's stderr on a thread so that it can never block the child.
fn collect_stderr(child: &mut Child) -> std::thread::JoinHandle<String> {
    let stderr = child.stderr.take();
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut text);
        }
        text
    })
}

fn finish(
    step: &str,
    mut child: Child,
    stderr: std::thread::JoinHandle<String>,
    sink: &mut BuildSink,
) -> Result<(), RootfsError> {
    let status = child
        .wait()
        .map_err(|e| failed(step, format!("waiting for {step}: {e}")))?;
    let text = stderr.join().unwrap_or_default();
    for line in text.lines() {
        sink.log_line(line);
    }
    if status.success() {
        Ok(())
    } else {
        let tail: Vec<&str> = text.lines().rev().take(ERROR_TAIL_LINES).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(failed(
            step,
            format!("{step} {status}: {}", tail.join(" | ")),
        ))
    }
}

fn extract_tarball(path: &Path, target: &Path, sink: &mut BuildSink) -> Result<(), RootfsError> {
    let mut file = File::open(path).map_err(|e| {
        RootfsError::SourceMissing(format!("cannot open '{}': {e}", path.display()))
    })?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut magic = [0u8; 8];
    let n = file.read(&mut magic).unwrap_or(0);
    let mut cmd = Command::new("tar");
    cmd.args(["-x", "--numeric-owner", "-p", "-f", "-", "-C"])
        .arg(target);
    match Compression::from_magic(&magic[..n]) {
        Some(Compression::Gzip) => cmd.arg("-z"),
        Some(Compression::Zstd) => cmd.arg("--zstd"),
        Some(Compression::Xz) => cmd.arg("-J"),
        Some(Compression::Bzip2) => cmd.arg("-j"),
        None => &mut cmd,
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = spawn("tar", &mut cmd)?;
    let stderr = collect_stderr(&mut child);
    let name = path.display().to_string();
    let progress = sink.progress;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error means tar stopped reading; its exit status says why.
        let _ = feed(&mut file, 0, total, &mut stdin, &|done| {
            progress(BuildProgress::bytes(
                BuildStage::Copying,
                format!("extracting {name}"),
                done,
                total,
            ))
        });
    }
    finish("tar", child, stderr, sink)
}

fn extract_initramfs(path: &Path, target: &Path, sink: &mut BuildSink) -> Result<(), RootfsError> {
    let mut file = File::open(path).map_err(|e| {
        RootfsError::SourceMissing(format!("cannot open '{}': {e}", path.display()))
    })?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let segments =
        cpio::split_initramfs(&mut file).map_err(|e| failed("initramfs", e.to_string()))?;
    sink.log_line(&format!("initramfs segments: {segments:?}"));
    let name = path.display().to_string();
    for segment in segments {
        let (start, end, compression) = match segment {
            Segment::Cpio { start, end } => (start, end, None),
            Segment::Compressed { start, compression } => (start, total, Some(compression)),
        };
        let mut cpio_cmd = Command::new("cpio");
        cpio_cmd
            .args(["-idm", "--quiet", "--no-absolute-filenames"])
            .current_dir(target)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut decompressor = None;
        let mut writer: Option<std::process::ChildStdin>;
        if let Some(c) = compression {
            let argv = c.decompressor();
            let mut d = Command::new(argv[0]);
            d.args(&argv[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut dchild = spawn(argv[0], &mut d)?;
            let out: OwnedFd = dchild
                .stdout
                .take()
                .map(OwnedFd::from)
                .ok_or_else(|| failed("initramfs", "decompressor has no stdout"))?;
            cpio_cmd.stdin(Stdio::from(out));
            writer = dchild.stdin.take();
            let derr = collect_stderr(&mut dchild);
            decompressor = Some((argv[0], dchild, derr));
        } else {
            cpio_cmd.stdin(Stdio::piped());
            writer = None;
        }
        let mut cpio_child = spawn("cpio", &mut cpio_cmd)?;
        drop(cpio_cmd); // closes our copy of the decompressor's stdout
        if writer.is_none() {
            writer = cpio_child.stdin.take();
        }
        let cpio_err = collect_stderr(&mut cpio_child);
        if let Some(mut w) = writer {
            let progress = sink.progress;
            let _ = feed(&mut file, start, end - start, &mut w, &|done| {
                progress(BuildProgress::bytes(
                    BuildStage::Copying,
                    format!("extracting {name}"),
                    start + done,
                    total,
                ))
            });
        }
        if let Some((step, child, err)) = decompressor {
            finish(step, child, err, sink)?;
        }
        finish("cpio", cpio_child, cpio_err, sink)?;
    }
    Ok(())
}
