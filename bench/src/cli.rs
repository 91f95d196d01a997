//! `cli-latency`: what a person times from outside. The `hutch` binary run as a whole process
//! (`hutch run --rm -m 64M debian -- /bin/true`: the CLI starts, connects, creates, waits for
//! the end, prints the output, removes the container and exits) against `runc run` of the
//! same rootfs, namespaces and limit, alternating.

use std::process::Command;

use crate::report::{ms, percentile, Row};
use crate::scenarios::{runc, time_command};
use crate::setup::BenchEnv;

/// `pairs` alternating runs of each (plus two of each first, not counted).
pub async fn cli_latency(env: &BenchEnv, pairs: usize) -> Result<Vec<Row>, String> {
    let hutch = env.bin_dir.join("hutch");
    let pid = std::process::id();
    let (mut hutch_t, mut runc_t) = (Vec::new(), Vec::new());
    for i in 0..pairs + 2 {
        let mut cli = Command::new(&hutch);
        cli.arg("--controller")
            .arg(&env.controller_url)
            .args(["run", "--rm", "-m", "64M", "--name"])
            .arg(format!("cli-{pid}-{i}"))
            .args(["debian", "--", "/bin/true"]);
        let h = time_command(&mut cli)?;
        let r = time_command(&mut runc(env, &format!("hb-cli-runc-{pid}-{i}"), 0))?;
        if i >= 2 {
            hutch_t.push(h);
            runc_t.push(r);
        }
    }
    let hutch_p50 = ms(percentile(&hutch_t, 0.5));
    let runc_p50 = ms(percentile(&runc_t, 0.5));
    let hutch_p99 = ms(percentile(&hutch_t, 0.99));
    let runc_p99 = ms(percentile(&runc_t, 0.99));
    Ok(vec![
        Row::ms_against(
            "cli-latency",
            "p50 hutch run --rm (whole process)",
            (hutch_p50, runc_p50, "runc run p50"),
            "<= 0.5x runc run",
            hutch_p50 <= 0.5 * runc_p50,
        ),
        Row::ms_against(
            "cli-latency",
            "p99 hutch run --rm (whole process)",
            (hutch_p99, runc_p99, "runc run p99"),
            "(for the record)",
            true,
        ),
    ])
}
