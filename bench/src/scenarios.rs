//! The scenarios. Each interleaves hutch and its peer (A B A B ...) so drift of this shared
//! machine hits both, and returns rows for the table.

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use hutch_controller::scheduler::{NodeCapacity, Request, Scheduler, Strategy};
use hutch_proto::v1;
use hutch_proto::v1::agent_client::AgentClient;
use hutch_proto::v1::controller_client::ControllerClient;
use tokio_stream::StreamExt;

use crate::explain;
use crate::report::{ms, percentile, Row};
use crate::setup::BenchEnv;

fn spec(rootfs: &str) -> v1::ContainerSpec {
    v1::ContainerSpec {
        rootfs: rootfs.into(),
        command: vec!["/bin/true".into()],
        memory_limit_bytes: Some(64 << 20),
        ..Default::default()
    }
}

/// The start-latency spec with a network mode.
pub fn spec_with_network(rootfs: &str, mode: v1::network_spec::Mode) -> v1::ContainerSpec {
    v1::ContainerSpec {
        network: Some(v1::NetworkSpec {
            mode: mode as i32,
            ports: Vec::new(),
        }),
        ..spec(rootfs)
    }
}

/// Whether `state` is one a container ends in.
pub fn is_final(state: i32) -> bool {
    [
        v1::ContainerState::Exited,
        v1::ContainerState::Failed,
        v1::ContainerState::OomKilled,
        v1::ContainerState::Lost,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

/// One timed run of a peer command; an error names the command.
pub fn time_command(cmd: &mut Command) -> Result<Duration, String> {
    let start = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(start.elapsed())
}

/// `runc run` of worker `worker`'s start-latency bundle (`/bin/true`, 5 namespaces, 64 MiB)
/// as container `id`.
pub fn runc(env: &BenchEnv, id: &str, worker: usize) -> Command {
    let mut c = Command::new("runc");
    c.arg("--root")
        .arg(env.dir.join("runc-state"))
        .args(["run", "--bundle"])
        .arg(&env.runc_bundles[worker])
        .arg(id);
    c
}

pub fn ctr(env: &BenchEnv, id: &str) -> Command {
    let mut c = Command::new("ctr");
    c.arg("--address")
        .arg(&env.containerd_socket)
        .args(["run", "--rm", "--memory-limit", &(64u64 << 20).to_string()])
        .arg("--fifo-dir")
        .arg(env.dir.join("fifo"))
        .arg("--cgroup")
        .arg(format!("{}/ctr-{id}", env.cgroup_parent))
        .arg("--rootfs")
        .arg(&env.rootfs_dir)
        .arg(id)
        .arg("/bin/true");
    c
}

fn unshare_chroot(env: &BenchEnv) -> Command {
    let mut c = Command::new("unshare");
    c.args(["-p", "-i", "-n", "-u", "-m", "-f", "chroot"])
        .arg(&env.rootfs_dir)
        .arg("/bin/true");
    c
}

pub type Watch = tonic::Streaming<v1::WatchEvent>;
pub type Client = ControllerClient<tonic::transport::Channel>;

/// A client of the controller and a watch of every change.
pub async fn connect_and_watch(env: &BenchEnv) -> Result<(Client, Watch), String> {
    let mut client = ControllerClient::connect(env.controller_url.clone())
        .await
        .map_err(|e| e.to_string())?;
    let watch = client
        .watch_containers(v1::WatchContainersRequest::default())
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    Ok((client, watch))
}

/// One create of `/bin/true` on `rootfs` through the controller: the times until `watch`
/// shows it RUNNING and EXITED. The container is removed afterwards.
pub async fn hutch_sample(
    client: &mut Client,
    watch: &mut Watch,
    name: &str,
    rootfs: &str,
) -> Result<(Duration, Duration), String> {
    hutch_sample_of(client, watch, name, spec(rootfs)).await
}

/// [`hutch_sample`] with a spec of the caller's.
pub async fn hutch_sample_of(
    client: &mut Client,
    watch: &mut Watch,
    name: &str,
    spec: v1::ContainerSpec,
) -> Result<(Duration, Duration), String> {
    let s = timed_start(client, watch, name, spec).await?;
    Ok((s.running, s.exited))
}

/// One start through the controller, timed from the client's side, with the record it
/// ended with (its start timeline from the node).
pub struct TimedStart {
    /// Create sent until a watcher saw RUNNING.
    pub running: Duration,
    /// Create sent until a watcher saw EXITED.
    pub exited: Duration,
    /// When the create was sent (this host's clock, as the nodes' timelines are).
    pub sent: SystemTime,
    /// The controller's answer to the create (its `created_at` is the record's birth).
    pub created: v1::Container,
    /// The last record the watch showed.
    pub last: v1::Container,
}

/// [`hutch_sample_of`], keeping what [`explain::Breakdown`] reads.
pub async fn timed_start(
    client: &mut Client,
    watch: &mut Watch,
    name: &str,
    spec: v1::ContainerSpec,
) -> Result<TimedStart, String> {
    let sent = SystemTime::now();
    let start = Instant::now();
    let created = client
        .create_container(v1::CreateContainerRequest {
            name: name.to_string(),
            spec: Some(spec),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut running = None;
    let mut last = v1::Container::default();
    while let Some(e) = watch.next().await {
        let c = e.map_err(|e| e.to_string())?.container.unwrap_or_default();
        if c.name != name {
            continue;
        }
        if c.state == v1::ContainerState::Running as i32 && running.is_none() {
            running = Some(start.elapsed());
        }
        let done = is_final(c.state);
        last = c;
        if done {
            if last.state != v1::ContainerState::Exited as i32 || last.exit_code != Some(0) {
                return Err(format!("{name} ended badly: {}", last.status_message));
            }
            break;
        }
    }
    let exited = start.elapsed();
    Ok(TimedStart {
        running: running.unwrap_or(exited),
        exited,
        sent,
        created,
        last,
    })
}

/// `start-latency`: CreateContainer at the controller until a watcher sees RUNNING and
/// EXITED, next to `runc run` and containerd's `ctr run --rm` on the same rootfs.
pub async fn start_latency(env: &BenchEnv, runs: usize, explain: bool) -> Result<Vec<Row>, String> {
    let (mut client, mut watch) = connect_and_watch(env).await?;
    let (mut to_running, mut to_exited, mut runc_t, mut ctr_t) = (vec![], vec![], vec![], vec![]);
    let mut breakdown = explain::Breakdown::default();
    for i in 0..runs + 2 {
        let name = format!("start-{i}");
        let sample = timed_start(&mut client, &mut watch, &name, spec("debian")).await?;
        let (running, exited) = (sample.running, sample.exited);
        let r = time_command(&mut runc(
            env,
            &format!("hb-runc-{}-{i}", std::process::id()),
            0,
        ))?;
        let c = time_command(&mut ctr(env, &format!("hb-ctr-{i}")))?;
        remove_one(&mut client, name).await?;
        if i >= 2 {
            // The first two of each are warm-up.
            to_running.push(running);
            to_exited.push(exited);
            runc_t.push(r);
            ctr_t.push(c);
            breakdown.add(&sample);
        }
    }
    if explain {
        breakdown.print(&mut std::io::stderr());
    }
    let runc_p50 = ms(percentile(&runc_t, 0.5));
    let ctr_p50 = ms(percentile(&ctr_t, 0.5));
    let p50 = ms(percentile(&to_exited, 0.5));
    let p99 = ms(percentile(&to_exited, 0.99));
    let row = |metric: &str, hutch: f64, peer: f64, peer_name: &str, target: &str, pass| {
        Row::ms_against(
            "start-latency",
            metric,
            (hutch, peer, peer_name),
            target,
            pass,
        )
    };
    Ok(vec![
        row(
            "p50 create->EXITED",
            p50,
            runc_p50,
            "runc p50",
            "<= 0.5x runc p50",
            p50 <= 0.5 * runc_p50,
        ),
        row(
            "p99 create->EXITED",
            p99,
            runc_p50,
            "runc p50",
            "<= 1x runc p50",
            p99 <= runc_p50,
        ),
        row(
            "p50 create->EXITED",
            p50,
            ctr_p50,
            "ctr run p50",
            "< containerd p50",
            p50 < ctr_p50,
        ),
        Row {
            scenario: "start-latency".into(),
            metric: "p50 create->RUNNING".into(),
            hutch: ms(percentile(&to_running, 0.5)),
            peer: None,
            peer_name: String::new(),
            unit: "ms".into(),
            ratio: None,
            target: "(for the record)".into(),
            pass: true,
        },
    ])
}

/// `agent-latency`: RunContainer straight at the agent until its event stream says EXITED,
/// next to `unshare -p -i -n -u -m -f chroot ROOTFS /bin/true`.
pub async fn agent_latency(env: &BenchEnv, runs: usize) -> Result<Vec<Row>, String> {
    let mut agent = AgentClient::connect(env.agent_url.clone())
        .await
        .map_err(|e| e.to_string())?;
    let since = agent
        .node_info(v1::NodeInfoRequest {})
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .last_event_seq;
    let mut events = agent
        .events(v1::EventsRequest { since_seq: since })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let (mut hutch_t, mut unshare_t) = (vec![], vec![]);
    for i in 0..runs + 2 {
        let id = format!("agent-{}-{i}", std::process::id());
        let start = Instant::now();
        agent
            .run_container(v1::RunContainerRequest {
                name: id.clone(),
                spec: Some(spec("debian")),
            })
            .await
            .map_err(|e| e.to_string())?;
        while let Some(e) = events.next().await {
            let e = e.map_err(|e| e.to_string())?;
            if e.container_id == id && is_final(e.state) {
                break;
            }
        }
        let t = start.elapsed();
        let u = time_command(&mut unshare_chroot(env))?;
        agent
            .remove_container(v1::RemoveContainerRequest { id, force: true })
            .await
            .map_err(|e| e.to_string())?;
        if i >= 2 {
            hutch_t.push(t);
            unshare_t.push(u);
        }
    }
    let (h, u) = (
        ms(percentile(&hutch_t, 0.5)),
        ms(percentile(&unshare_t, 0.5)),
    );
    Ok(vec![Row {
        scenario: "agent-latency".into(),
        metric: "p50 RunContainer->EXITED".into(),
        hutch: h,
        peer: Some(u),
        peer_name: "unshare+chroot p50".into(),
        unit: "ms".into(),
        ratio: Some(h / u),
        target: "<= 4x unshare+chroot".into(),
        pass: h <= 4.0 * u,
    }])
}

/// Creates `prefix0` .. `prefix{count-1}` from `spec`, 16 requests in flight, as fast as
/// the controller acknowledges them.
async fn create_many(
    client: &Client,
    prefix: &str,
    count: usize,
    spec: &v1::ContainerSpec,
) -> Result<(), String> {
    let mut in_flight = tokio::task::JoinSet::new();
    for i in 0..count {
        if in_flight.len() >= 16 {
            if let Some(done) = in_flight.join_next().await {
                done.map_err(|e| e.to_string())??;
            }
        }
        let mut client = client.clone();
        let request = v1::CreateContainerRequest {
            name: format!("{prefix}{i}"),
            spec: Some(spec.clone()),
            ..Default::default()
        };
        in_flight.spawn(async move {
            // A controller whose term ended (its etcd lease lapsed on a loaded machine)
            // says UNAVAILABLE until it leads again: try again, as a client would.
            let mut retried = false;
            for _ in 0..TERM_RETRIES {
                match client.create_container(request.clone()).await {
                    Ok(_) => return Ok(()),
                    Err(s) if retried && s.code() == tonic::Code::AlreadyExists => return Ok(()),
                    Err(s) if s.code() == tonic::Code::Unavailable => {
                        retried = true;
                        tokio::time::sleep(TERM_RETRY_PAUSE).await;
                    }
                    Err(s) => return Err(format!("create {i}: {s}")),
                }
            }
            Err(format!("create {i}: still unavailable"))
        });
    }
    while let Some(done) = in_flight.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// How often a scenario's creates and watch try again on a controller between terms.
const TERM_RETRIES: usize = 40;
/// The pause between those tries.
const TERM_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// How long a scenario's watch may see no change before the scenario fails.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Follows `watch` until `count` containers named `prefix...` have reached a state `reached`
/// accepts; a watch that a controller ends with UNAVAILABLE (its term ended) is opened
/// again from the last revision seen.
async fn wait_for_states(
    client: &Client,
    watch: &mut Watch,
    prefix: &str,
    count: usize,
    reached: impl Fn(i32) -> bool,
) -> Result<(), String> {
    let mut done = std::collections::HashSet::new();
    let (mut revision, mut rewatches) = (0, 0);
    while done.len() < count {
        // A scenario that stops moving fails instead of hanging the run (after a term
        // change, the scale scenarios' simulated nodes do not register again).
        let next = tokio::time::timeout(STALL_LIMIT, watch.next()).await;
        let Ok(next) = next else {
            return Err(format!(
                "no change for {STALL_LIMIT:?}: {} of {count} containers reached the state",
                done.len()
            ));
        };
        let Some(e) = next else {
            return Err("the watch ended".into());
        };
        let e = match e {
            Ok(e) => e,
            Err(s) if s.code() == tonic::Code::Unavailable && rewatches < TERM_RETRIES => {
                eprintln!(
                    "bench: the watch ended ({}); watching again from revision {revision}",
                    s.message()
                );
                rewatches += 1;
                tokio::time::sleep(TERM_RETRY_PAUSE).await;
                match client
                    .clone()
                    .watch_containers(v1::WatchContainersRequest {
                        since_revision: revision,
                        ..Default::default()
                    })
                    .await
                {
                    Ok(w) => *watch = w.into_inner(),
                    Err(s) if s.code() == tonic::Code::Unavailable => {}
                    Err(s) => return Err(s.to_string()),
                }
                continue;
            }
            Err(s) => return Err(s.to_string()),
        };
        revision = revision.max(e.revision);
        let c = e.container.unwrap_or_default();
        if c.name.starts_with(prefix) && reached(c.state) {
            done.insert(c.name);
        }
    }
    Ok(())
}

/// Creates `count` containers (see [`create_many`]) while following `watch` (so it never
/// falls behind) until each has reached a state `reached` accepts.
pub async fn start_and_wait(
    client: &Client,
    watch: &mut Watch,
    prefix: &str,
    count: usize,
    spec: &v1::ContainerSpec,
    reached: impl Fn(i32) -> bool,
) -> Result<(), String> {
    let creator = {
        let (client, prefix, spec) = (client.clone(), prefix.to_string(), spec.clone());
        tokio::spawn(async move { create_many(&client, &prefix, count, &spec).await })
    };
    wait_for_states(client, watch, prefix, count, reached).await?;
    creator.await.map_err(|e| e.to_string())?
}

/// Force-removes container `name`.
pub async fn remove_one(client: &mut Client, name: String) -> Result<(), String> {
    client
        .remove_container(v1::RemoveContainerRequest {
            id: name,
            force: true,
        })
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Force-removes `prefix0` .. `prefix{count-1}`, as far as it can (a scenario's cleanup).
pub async fn remove_many(client: &Client, prefix: &str, count: usize) {
    let mut client = client.clone();
    for i in 0..count {
        let _ = remove_one(&mut client, format!("{prefix}{i}")).await;
    }
}

/// `throughput`'s goal: this many times runc's rate (2 workers), measured in the same run.
const THROUGHPUT_GOAL: f64 = 6.0;

/// `throughput`: `count` creates as fast as the API takes them (16 in flight) until all are
/// EXITED, next to runc in a loop with 2 parallel workers.
pub async fn throughput(env: &BenchEnv, count: usize) -> Result<Vec<Row>, String> {
    let (client, mut watch) = connect_and_watch(env).await?;
    let prefix = format!("tp-{}-", std::process::id());
    let start = Instant::now();
    start_and_wait(
        &client,
        &mut watch,
        &prefix,
        count,
        &spec("debian"),
        is_final,
    )
    .await?;
    let hutch_secs = start.elapsed().as_secs_f64();
    drop(watch);
    // Peer: runc with 2 workers.
    let start = Instant::now();
    let per_worker = count / 2;
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let mut cmds: Vec<Command> = (0..per_worker)
                .map(|i| runc(env, &format!("hb-tp-{}-{w}-{i}", std::process::id()), w))
                .collect();
            std::thread::spawn(move || -> Result<(), String> {
                for c in &mut cmds {
                    time_command(c)?;
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "runc worker panicked".to_string())??;
    }
    let runc_rate = (per_worker * 2) as f64 / start.elapsed().as_secs_f64();
    let rate = count as f64 / hutch_secs;
    remove_many(&client, &prefix, count).await;
    Ok(vec![Row {
        scenario: "throughput".into(),
        metric: format!("{count} x /bin/true to EXITED"),
        hutch: rate,
        peer: Some(runc_rate),
        peer_name: "runc, 2 workers".into(),
        unit: "containers/s".into(),
        ratio: Some(rate / runc_rate),
        target: format!(">= {THROUGHPUT_GOAL}x runc"),
        pass: rate >= THROUGHPUT_GOAL * runc_rate,
    }])
}

/// Cost of `requests` placements on `nodes` nodes (pure scheduler), in seconds.
fn placement_seconds(nodes: usize, requests: usize) -> f64 {
    let mut s = Scheduler::new(Strategy::Spread);
    let zones = ["a", "b", "c", "d"];
    for i in 0..nodes {
        let labels: BTreeMap<String, String> =
            [("zone".to_string(), zones[i % zones.len()].to_string())].into();
        s.set_node(
            &format!("node-{i:05}"),
            NodeCapacity {
                labels,
                allocatable_bytes: 1 << 40,
                allocatable_cpu_millicores: 0,
                schedulable: true,
                rootfs: ["debian".to_string()].into_iter().collect(),
                volumes: Default::default(),
            },
        );
    }
    let selectors: Vec<BTreeMap<String, String>> = std::iter::once(BTreeMap::new())
        .chain(
            zones
                .iter()
                .map(|z| [("zone".to_string(), z.to_string())].into()),
        )
        .collect();
    let sizes = [16u64 << 20, 64 << 20, 256 << 20, 1 << 30];
    let start = Instant::now();
    let mut placed: HashMap<String, u64> = HashMap::new();
    for i in 0..requests {
        let req = Request {
            memory_bytes: sizes[i % sizes.len()],
            node: None,
            selector: &selectors[i % selectors.len()],
            rootfs: "debian",
            rootfs_buildable: false,
            ports: &[],
            cpu_millicores: 0,
            spread: None,
        };
        if let Ok(n) = s.place(&req) {
            s.reserve(&n, &req.claim());
            *placed.entry(n).or_default() += 1;
        }
    }
    start.elapsed().as_secs_f64()
}

/// `scheduler`: pure placement, 100,000 requests of mixed sizes with selectors, on 10,000
/// nodes, and the per-placement cost from 1,000 to 10,000 nodes.
pub fn scheduler(requests: usize, rounds: usize) -> Vec<Row> {
    // Alternating 10,000 and 1,000 nodes, `rounds` times, so a burst of load on this shared
    // machine hits one sample of each rather than a whole side; medians of each.
    let (mut bigs, mut smalls) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        bigs.push(Duration::from_secs_f64(placement_seconds(10_000, requests)));
        smalls.push(Duration::from_secs_f64(placement_seconds(1_000, requests)));
    }
    let big = percentile(&bigs, 0.5).as_secs_f64();
    let small = percentile(&smalls, 0.5).as_secs_f64();
    let rate = requests as f64 / big;
    let growth = big / small;
    vec![
        Row {
            scenario: "scheduler".into(),
            metric: format!("{requests} placements, 10,000 nodes (median of {rounds})"),
            hutch: rate,
            peer: None,
            peer_name: String::new(),
            unit: "placements/s".into(),
            ratio: None,
            target: ">= 100,000/s".into(),
            pass: rate >= 100_000.0,
        },
        Row {
            scenario: "scheduler".into(),
            metric: "cost 10,000 / 1,000 nodes".into(),
            hutch: growth,
            peer: None,
            peer_name: String::new(),
            unit: "x".into(),
            ratio: None,
            target: "< 1.5".into(),
            pass: growth < 1.5,
        },
    ]
}

/// `rootfs-size`: the same start on a 5 MB busybox rootfs and on the 230 MB Debian one,
/// alternating: an overlay per container means the size does not matter.
pub async fn rootfs_size(env: &BenchEnv, runs: usize) -> Result<Vec<Row>, String> {
    let (mut client, mut watch) = connect_and_watch(env).await?;
    let (mut small, mut big) = (vec![], vec![]);
    for i in 0..runs + 2 {
        for (rootfs, out) in [("busybox", &mut small), ("debian", &mut big)] {
            let name = format!("size-{rootfs}-{i}");
            let (_, exited) = hutch_sample(&mut client, &mut watch, &name, rootfs).await?;
            remove_one(&mut client, name).await?;
            if i >= 2 {
                out.push(exited);
            }
        }
    }
    let (s, b) = (ms(percentile(&small, 0.5)), ms(percentile(&big, 0.5)));
    Ok(vec![Row {
        scenario: "rootfs-size".into(),
        metric: "p50 create->EXITED, Debian".into(),
        hutch: b,
        peer: Some(s),
        peer_name: format!("busybox, {}", env.busybox_size),
        unit: "ms".into(),
        ratio: Some(b / s),
        target: "<= 1.1x busybox".into(),
        pass: b <= 1.1 * s,
    }])
}

/// `watch-fanout`: `watchers` WatchContainers streams while `count` containers run: the
/// delay from the controller recording a change (the event's time) to each watcher
/// receiving it.
pub async fn watch_fanout(
    env: &BenchEnv,
    watchers: usize,
    count: usize,
) -> Result<Vec<Row>, String> {
    let (mut client, _) = connect_and_watch(env).await?;
    // From now on: the changes of earlier scenarios (still kept for replay) are not this one's.
    let since = client
        .list_containers(v1::ListClusterContainersRequest::default())
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .revision;
    let prefix = format!("fan-{}-", std::process::id());
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        // A connection per watcher, as separate clients would have.
        let mut c = ControllerClient::connect(env.controller_url.clone())
            .await
            .map_err(|e| e.to_string())?;
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = c
                .watch_containers(v1::WatchContainersRequest {
                    since_revision: since,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            let mut delays = Vec::new();
            let mut ended = 0;
            while ended < count {
                let Some(e) = stream.next().await else { break };
                let e = e.map_err(|e| e.to_string())?;
                let now = std::time::SystemTime::now();
                let Some(t) = e.time else { continue };
                let at = std::time::UNIX_EPOCH
                    + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
                delays.push(now.duration_since(at).unwrap_or_default());
                let c = e.container.unwrap_or_default();
                if c.name.starts_with(&prefix) && is_final(c.state) {
                    ended += 1;
                }
            }
            Ok::<Vec<Duration>, String>(delays)
        }));
    }
    for i in 0..count {
        client
            .create_container(v1::CreateContainerRequest {
                name: format!("{prefix}{i}"),
                spec: Some(spec("debian")),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    remove_many(&client, &prefix, count).await;
    let p99 = ms(percentile(&all, 0.99));
    // The table keeps the p99; the rest of the distribution, for comparing builds (a p99
    // of one run moves by half on this shared machine, the p50 much less).
    eprintln!(
        "bench: watch delays of {} receipts: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        all.len(),
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.9)),
        p99,
        ms(percentile(&all, 0.999))
    );
    Ok(vec![Row {
        scenario: "watch-fanout".into(),
        metric: format!("p99 delay, {watchers} watchers, {count} containers"),
        hutch: p99,
        peer: None,
        peer_name: String::new(),
        unit: "ms".into(),
        ratio: None,
        target: "< 5 ms".into(),
        pass: p99 < 5.0,
    }])
}
