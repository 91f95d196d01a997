//! The tutorial (`containers-from-scratch`) as a program: each step runs in a container on
//! the cluster, through the SDK.
//!
//! Usage: HUTCH_CONTROLLER=http://127.0.0.1:7000 cargo run -p hutch --example tutorial [ROOTFS]

use hutch::{Client, ContainerSpec, Namespace};
use tokio_stream::StreamExt;

/// Runs `spec` to its end and prints what it printed and how it ended.
async fn step(
    client: &Client,
    title: &str,
    spec: ContainerSpec,
) -> hutch::Result<hutch::proto::Container> {
    println!("== {title}");
    let (container, _) = client.create(&spec).await?;
    let end = container.wait().await?;
    let mut logs = container.logs(false, None).await?;
    while let Some(line) = logs.next().await {
        println!("   {}", line?.line);
    }
    println!(
        "   -> {} (exit code {:?}, signal {:?})",
        hutch::proto::ContainerState::try_from(end.state)
            .map(|s| s.as_str_name())
            .unwrap_or("?"),
        end.exit_code,
        end.signal
    );
    container.remove(true).await?;
    Ok(end)
}

#[tokio::main]
async fn main() -> hutch::Result<()> {
    let url = std::env::var("HUTCH_CONTROLLER").unwrap_or_else(|_| "http://127.0.0.1:7000".into());
    let rootfs = std::env::args().nth(1).unwrap_or_else(|| "debian".into());
    let client = Client::connect(&url).await?;
    let all = [
        Namespace::Pid,
        Namespace::Ipc,
        Namespace::Net,
        Namespace::Uts,
        Namespace::Mount,
    ];

    // unshare -p -f --mount-proc chroot rootfs ps -ef: the command is PID 1.
    let ps = step(
        &client,
        "a pid namespace: ps -ef",
        ContainerSpec::new(&rootfs)
            .command(["ps", "-ef"])
            .namespaces([Namespace::Pid, Namespace::Mount]),
    )
    .await?;
    // unshare -u: a hostname of its own.
    step(
        &client,
        "a uts namespace: hostname",
        ContainerSpec::new(&rootfs)
            .command(["hostname"])
            .hostname("tutorial")
            .namespaces(all),
    )
    .await?;
    // unshare -n: only lo.
    step(
        &client,
        "a net namespace: ip addr",
        ContainerSpec::new(&rootfs)
            .command(["ip", "-brief", "addr"])
            .namespaces(all),
    )
    .await?;
    // unshare -i: no IPC objects of the host.
    step(
        &client,
        "an ipc namespace: ipcs -q",
        ContainerSpec::new(&rootfs)
            .command(["ipcs", "-q"])
            .namespaces(all),
    )
    .await?;
    // A memory cgroup of 16 MiB: a process that wants more is OOM-killed.
    let oom = step(
        &client,
        "a memory cgroup: 16M, then allocate more",
        ContainerSpec::new(&rootfs)
            .command(["/bin/sh", "-c", "x=a; while true; do x=$x$x; done"])
            .memory("16M")
            .namespaces(all),
    )
    .await?;

    let ok = ps.exit_code == Some(0) && oom.oom_killed;
    println!("tutorial {}", if ok { "done" } else { "FAILED" });
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
