//! `metrics`: what Prometheus metrics cost. A second controller and agent serve
//! `--metrics-listen`, both scraped once a second (a busy Prometheus scrapes every 15 s);
//! creates alternate between the run's own pair (no metrics) and this one, so the start
//! latency of each is measured under the same load. Then `dense` sleeping containers run on
//! the metered agent and its `/metrics` is fetched 20 times: what one scrape takes.

use std::time::{Duration, Instant};

use hutch_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::report::{ms, percentile, Row};
use crate::scenarios::{remove_many, start_and_wait};
use crate::setup::{alternate, start_pair, BenchEnv, Pair};

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// One `GET /metrics` of `url` (`http://HOST:PORT/metrics`): its time and the body's size.
pub async fn scrape(url: &str) -> Result<(Duration, usize), String> {
    let addr = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .ok_or_else(|| format!("not a metrics URL: {url}"))?;
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(err)?;
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .map_err(err)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.map_err(err)?;
    let took = started.elapsed();
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "scrape of {url}: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        ));
    }
    Ok((took, answer.len()))
}

/// The metered pair: a controller and an agent serving `--metrics-listen`.
async fn start_metered(env: &BenchEnv) -> Result<Pair, String> {
    let metered = ["--metrics-listen", "127.0.0.1:0"];
    let pair = start_pair(env, "metrics", &metered, &metered).await?;
    if pair.urls.len() != 2 {
        return Err("a daemon did not print its metrics URL".into());
    }
    Ok(pair)
}

/// The `metrics` scenario.
pub async fn metrics_cost(env: &BenchEnv, runs: usize, dense: usize) -> Result<Vec<Row>, String> {
    let mut metered = start_metered(env).await?;
    // Scraped once a second while the starts run.
    let scraper = {
        let urls = metered.urls.clone();
        tokio::spawn(async move {
            loop {
                for u in &urls {
                    let _ = scrape(u).await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let (with, without) = alternate(env, &mut metered, "metrics", runs).await?;
    scraper.abort();
    let (m50, p50) = (ms(percentile(&with, 0.5)), ms(percentile(&without, 0.5)));

    // Many containers, then the scrape of the agent that runs them.
    let prefix = format!("metered-{}-", std::process::id());
    let sleeper = v1::ContainerSpec {
        rootfs: "debian".into(),
        command: vec!["/bin/sleep".into(), "infinity".into()],
        memory_limit_bytes: Some(16 << 20),
        ..Default::default()
    };
    start_and_wait(
        &metered.client,
        &mut metered.watch,
        &prefix,
        dense,
        &sleeper,
        |s| s == v1::ContainerState::Running as i32,
    )
    .await?;
    let mut scrapes = Vec::new();
    let mut size = 0;
    for _ in 0..20 {
        let (took, bytes) = scrape(&metered.urls[0]).await?;
        scrapes.push(took);
        size = bytes;
    }
    remove_many(&metered.client, &prefix, dense).await;
    let s50 = ms(percentile(&scrapes, 0.5));
    let smax = ms(percentile(&scrapes, 1.0));
    Ok(vec![
        Row {
            scenario: "metrics".into(),
            metric: "p50 create->EXITED, --metrics-listen on (scraped 1/s)".into(),
            hutch: m50,
            peer: Some(p50),
            peer_name: "hutch, metrics off, p50".into(),
            unit: "ms".into(),
            ratio: Some(m50 / p50),
            target: "<= 1.05x metrics off".into(),
            pass: m50 <= 1.05 * p50,
        },
        Row {
            scenario: "metrics".into(),
            metric: format!(
                "agent /metrics scrape with {dense} containers, p50 ({} KiB)",
                size / 1024
            ),
            hutch: s50,
            peer: None,
            peer_name: format!("max {smax:.1} ms"),
            unit: "ms".into(),
            ratio: None,
            target: "< 50 ms".into(),
            pass: s50 < 50.0,
        },
    ])
}
