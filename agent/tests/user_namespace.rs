//! Tutorial: `unshare -U`: root inside the container is an unprivileged uid outside.

use hutch_testkit as common;

use common::TestHost;
use hutch_agent::runtime::state::Status;
use hutch_agent::spec::{IdMap, Namespace};

fn host_ids(pid: u32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| -> u32 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("id field")
    };
    (field("Uid:"), field("Gid:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_inside_is_unprivileged_outside() {
    let host = TestHost::new("userns").await;
    let mut spec = host.spec(&["sleep", "60"]);
    spec.namespaces.push(Namespace::User);
    let info = host.runtime.run("u1", spec).await.expect("run");
    assert_eq!(info.state.status, Status::Running);
    let pid = info.state.pid.expect("pid");

    let (uid, gid) = host_ids(pid);
    println!("host sees the container's init as uid {uid} gid {gid}");
    assert_eq!((uid, gid), (IdMap::DEFAULT.outside, IdMap::DEFAULT.outside));

    let id = host
        .runtime
        .exec("u1", vec!["id".into()])
        .await
        .expect("exec id");
    let id_out = String::from_utf8_lossy(&id.stdout).to_string();
    println!("inside: {id_out}");
    assert!(id_out.starts_with("uid=0(root) gid=0(root)"), "{id_out}");
    let map = host
        .runtime
        .exec("u1", vec!["cat".into(), "/proc/self/uid_map".into()])
        .await
        .expect("uid_map");
    let map_out: Vec<String> = String::from_utf8_lossy(&map.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(map_out, vec!["0", "100000", "65536"]);

    // Root inside cannot do what root outside can: load a module, for one.
    let denied = host
        .runtime
        .exec(
            "u1",
            vec![
                "sh".into(),
                "-c".into(),
                "echo 1 > /proc/sys/kernel/panic 2>/dev/null && echo wrote || echo denied".into(),
            ],
        )
        .await
        .expect("exec sh");
    assert_eq!(String::from_utf8_lossy(&denied.stdout).trim(), "denied");

    let user = info
        .state
        .namespaces
        .iter()
        .find(|r| r.kind == Namespace::User)
        .expect("user ns reported");
    assert!(user.isolated);
    host.runtime
        .stop("u1", Some(std::time::Duration::from_secs(1)))
        .await
        .expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_id_map() {
    let host = TestHost::new("usermap").await;
    let mut spec = host.spec(&["sh", "-c", "id -u; cat /proc/self/uid_map"]);
    spec.namespaces.push(Namespace::User);
    spec.uid_map = vec![IdMap {
        inside: 0,
        outside: 200_000,
        count: 1000,
    }];
    spec.gid_map = spec.uid_map.clone();
    let info = host.run_to_end("u2", spec).await;
    assert_eq!(info.state.exit_code, Some(0), "{:?}", info.state);
    let out: Vec<String> = host
        .stdout("u2")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(out, vec!["0", "0", "200000", "1000"]);
}
