//! Tutorial: `unshare -p -f chroot rootfs /bin/bash; mount -t proc proc /proc; ps -ef` shows
//! the shell as PID 1 and nothing of the host; `ls -l /proc/PID/ns` proves only pid is
//! isolated.

use hutch_testkit as common;

use common::TestHost;
use hutch_agent::runtime::init::own_namespaces;
use hutch_agent::runtime::state::Status;
use hutch_agent::spec::Namespace;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_namespace_only_shows_command_as_pid_1_and_shares_the_rest() {
    let host = TestHost::new("pidns").await;
    let mut spec = host.spec(&["ps", "-ef"]);
    spec.namespaces = vec![Namespace::Pid];
    let info = host.run_to_end("ps", spec).await;
    assert_eq!(info.state.status, Status::Exited);
    assert_eq!(info.state.exit_code, Some(0));

    let out = host.stdout("ps");
    println!("ps -ef inside:\n{out}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "only ps itself is visible: {out}");
    let cols: Vec<&str> = rows[0].split_whitespace().collect();
    assert_eq!(cols[1], "1", "ps is PID 1: {out}");
    assert!(rows[0].ends_with("ps -ef"));

    let host_ns = own_namespaces();
    for report in &info.state.namespaces {
        let mine = host_ns
            .iter()
            .find(|(k, _)| *k == report.kind)
            .map(|(_, i)| *i);
        assert_eq!(
            Some(report.host_inode),
            mine,
            "host inode of {} matches this process",
            report.kind
        );
        let expect_isolated = report.kind == Namespace::Pid;
        assert_eq!(
            report.isolated, expect_isolated,
            "{}: {report:?}",
            report.kind
        );
        assert_eq!(report.isolated, report.container_inode != report.host_inode);
    }
    assert_eq!(info.state.namespaces.len(), Namespace::ALL.len());
}
