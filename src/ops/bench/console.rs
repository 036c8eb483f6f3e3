//! `labctl console`'s cost: each data endpoint's answer time against the `status` report the
//! pipeline page rests on (built in this process, in the same run, interleaved), and the
//! console process's CPU (idle, and with one page watching its event stream) and memory, read
//! from /proc. The console runs as its own process, started by the caller's command line, so
//! nothing of the benchmark counts as the console's.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::AsyncBufReadExt;

use super::Measurement;
use crate::{
    clients::docker::Runtime,
    ops::{lab::Lab, status},
};

#[derive(Debug, Clone)]
pub struct Settings {
    /// Requests per endpoint (and `status` reports), interleaved; medians and worst shown.
    pub runs: usize,
    /// Seconds of each CPU sample (idle, and with one page watching).
    pub cpu_secs: f64,
}

/// How long the console goes on refreshing after its last request (`ops::console::LINGER`),
/// plus a refresh in flight.
const SETTLE: Duration = Duration::from_secs(13);
const TARGET_MS: f64 = 300.0;

/// A console process; killed when dropped.
struct Running {
    child: tokio::process::Child,
    pid: u32,
    base: String,
}

async fn start(mut cmd: tokio::process::Command) -> Result<Running> {
    cmd.args(["--port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("starting `labctl console`")?;
    let pid = child.id().ok_or_else(|| anyhow!("the console exited at once"))?;
    let stdout = child.stdout.take().context("the console's output")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("the console printed no address within 30 s")?
        .context("reading the console's output")?
        .ok_or_else(|| anyhow!("the console exited before printing its address"))?;
    let base = first
        .strip_prefix("labctl console: ")
        .map(|u| u.split('#').next().unwrap_or(u).trim_end_matches('/').to_string())
        .ok_or_else(|| anyhow!("unexpected first line from the console: {first}"))?;
    // Keep reading, so a full pipe never blocks the console.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Running { child, pid, base })
}

/// User plus system CPU seconds of a process so far.
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("unexpected /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        f.get(i).and_then(|v| v.parse::<f64>().ok()).context("unexpected /proc stat")
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / hz.max(1.0))
}

/// A process's resident memory in MiB, from /proc/PID/status.
struct Memory {
    resident: f64,
    peak: f64,
    /// Heap, stacks: what the process itself allocated.
    anonymous: f64,
    /// Pages of the binary and its libraries: shared with the page cache, reclaimable.
    file: f64,
}

fn memory(pid: u32) -> Result<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let mib = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    Ok(Memory {
        resident: mib("VmRSS:")?,
        peak: mib("VmHWM:")?,
        anonymous: mib("RssAnon:")?,
        file: mib("RssFile:")?,
    })
}

async fn cpu_share(pid: u32, over: Duration) -> Result<f64> {
    let (c0, t0) = (cpu_secs(pid)?, Instant::now());
    tokio::time::sleep(over).await;
    Ok((cpu_secs(pid)? - c0) / t0.elapsed().as_secs_f64() * 100.0)
}

fn median_and_max(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

/// One GET, timed to the last byte of the body; an answer that is not 200 is an error.
async fn timed_get(http: &reqwest::Client, url: &str) -> Result<f64> {
    let t = Instant::now();
    let res = http.get(url).send().await.with_context(|| format!("GET {url}"))?;
    let status = res.status();
    let body = res.bytes().await.with_context(|| format!("reading GET {url}"))?;
    if !status.is_success() {
        bail!("GET {url}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

pub async fn run(
    lab: &Lab,
    bench: &Settings,
    console: tokio::process::Command,
) -> Result<Vec<Measurement>> {
    let rt = Runtime::connect().await?;
    let runs = bench.runs.max(1);
    let cpu_over = Duration::from_secs_f64(bench.cpu_secs.max(1.0));
    let mut con = start(console).await?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let base = &con.base;

    // What the pages ask for, with a machine, a sensor and a container this lab has.
    let first = http
        .get(format!("{base}/api/machines"))
        .send()
        .await
        .context("asking the console for its machines")?;
    let machines: Vec<String> = first.json().await.context("the console's machine list")?;
    let machine = machines.first().cloned().unwrap_or_else(|| "CNC-1".into());
    let containers: serde_json::Value =
        http.get(format!("{base}/api/containers")).send().await?.json().await?;
    let container =
        containers[0]["name"].as_str().context("the console lists no container")?.to_string();
    let endpoints: Vec<(&str, String)> = vec![
        ("/api/snapshot (pipeline page)", "/api/snapshot".into()),
        ("/api/topic/messages, a partition", "/api/topic/messages?partition=0&limit=50".into()),
        (
            "/api/topic/messages, machine+sensor",
            format!("/api/topic/messages?machine={machine}&sensor=temperature&limit=50"),
        ),
        ("/api/rejects", "/api/rejects?limit=10".into()),
        (
            "/api/windows (24 h chart)",
            format!("/api/windows?machine={machine}&sensor=temperature&hours=24"),
        ),
        ("/api/machines", "/api/machines".into()),
        ("/api/containers (services page)", "/api/containers".into()),
        ("/api/containers/NAME/logs", format!("/api/containers/{container}/logs?lines=200")),
    ];
    // The first snapshot waits for the console's first report: not what a page sees after.
    timed_get(&http, &format!("{base}/api/snapshot")).await?;

    let mut baseline = Vec::new();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); endpoints.len()];
    for _ in 0..runs {
        let t = Instant::now();
        status::report(lab, &rt, Duration::from_secs(2)).await?;
        baseline.push(t.elapsed().as_secs_f64() * 1000.0);
        for (i, (_, path)) in endpoints.iter().enumerate() {
            times[i].push(timed_get(&http, &format!("{base}{path}")).await?);
        }
    }
    let busy = memory(con.pid)?;

    // Idle: no request and no page open, after the console's linger ran out.
    tokio::time::sleep(SETTLE).await;
    let idle = cpu_share(con.pid, cpu_over).await?;
    // One page watching: the event stream open, snapshots pushed every refresh.
    let mut events = http
        .get(format!("{base}/api/events"))
        .timeout(cpu_over + Duration::from_secs(60))
        .send()
        .await
        .context("opening the console's event stream")?;
    let reader = tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok(Some(chunk)) = events.chunk().await {
            n += chunk.len();
        }
        n
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let watched = cpu_share(con.pid, cpu_over).await?;
    reader.abort();
    let mem = memory(con.pid)?;
    con.child.kill().await.context("stopping the console")?;

    let (bm, bx) = median_and_max(baseline);
    let mut rows = vec![Measurement::new("console", "status report in process (median)", bm, "ms")
        .note(format!("worst {bx:.0} ms of {runs}; the baseline of the rows below"))];
    for ((name, _), t) in endpoints.iter().zip(times) {
        let (m, x) = median_and_max(t);
        rows.push(
            Measurement::new("console", format!("{name} (median)"), m, "ms")
                .against("status report in process", bm / m)
                .note(format!("worst {x:.0} ms of {runs}; target {TARGET_MS:.0} ms")),
        );
    }
    let secs = cpu_over.as_secs_f64();
    rows.push(Measurement::new("console", "CPU idle (no page, no request)", idle, "% core").note(
        format!("over {secs:.0} s after {} s without requests; target 2 %", SETTLE.as_secs()),
    ));
    rows.push(
        Measurement::new("console", "CPU with one page watching", watched, "% core").note(format!(
            "over {secs:.0} s, event stream open, a report every refresh (status itself costs the lab's services more)"
        )),
    );
    let last = if mem.resident >= busy.resident { &mem } else { &busy };
    rows.push(
        Measurement::new("console", "memory resident", last.resident, "MiB").note(format!(
            "{:.1} MB; anonymous {:.1} MiB (heap, stacks), file-backed {:.1} MiB (the binary's code, shared with the page cache); peak {:.1} MiB; target 30 MB",
            last.resident * 1.048_576,
            last.anonymous,
            last.file,
            mem.peak.max(busy.peak)
        )),
    );
    Ok(rows)
}
