//! Full disks under the database and under the broker while the pipeline runs: `status` names
//! the volume and the fix, nothing already stored is lost or damaged, and the pipeline resumes
//! by itself once space is freed. One lab, two phases:
//! 1. the database's volume full while the Flink job writes a backfill;
//! 2. the broker's volume full while the generator produces.
//!
//! Both volumes are small tmpfs file systems made before `up` (labctl uses a volume of its
//! name as it finds it). The test fills one with a file of its own through the volume's mount
//! point on this host, and frees the space by removing that file. A container of the test's
//! own keeps both volumes mounted, so that a service container that stops and starts again
//! meanwhile finds its data (the engine unmounts a tmpfs volume, and drops its content, when
//! no container uses it any more).

mod common;

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{docker, rt, topic_total, verify, wait_for, TestLab};

const VOLUME_MIB: u64 = 320;

/// A small tmpfs volume of the lab's, named as labctl names it.
fn tmpfs_volume(t: &TestLab, name: &str) -> String {
    let volume = format!("{}-{name}", t.project);
    docker(&[
        "volume",
        "create",
        "--driver",
        "local",
        "--opt",
        "type=tmpfs",
        "--opt",
        "device=tmpfs",
        "--opt",
        &format!("o=size={VOLUME_MIB}m"),
        "--label",
        &format!("labctl.project={}", t.project),
        &volume,
    ]);
    volume
}

/// The test's container that keeps the volumes mounted; removed when dropped (before the lab,
/// whose `down --volumes` then removes the volumes).
struct Holder(String);

impl Holder {
    fn start(t: &TestLab, volumes: &[&str]) -> Self {
        let name = format!("{}-volume-holder", t.project);
        let mut args = vec!["run", "-d", "--name", &name, "--network", "none"];
        let mounts: Vec<String> =
            volumes.iter().enumerate().map(|(i, v)| format!("{v}:/hold/{i}")).collect();
        for m in &mounts {
            args.extend(["-v", m.as_str()]);
        }
        args.extend(["labctl/debian:bookworm", "sleep", "infinity"]);
        docker(&args);
        Holder(name)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// A file that fills a volume to the last byte while it exists.
struct Filler(PathBuf);

impl Filler {
    fn fill(volume: &str) -> Self {
        let mountpoint = docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", volume]);
        let path = Path::new(&mountpoint).join("labctl-test-filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        eprintln!("filled {volume} with {} MiB", written >> 20);
        Filler(path)
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `status --json` (it exits non-zero while a light is red; the report is what counts).
fn status(t: &TestLab) -> serde_json::Value {
    serde_json::from_slice(&t.command(&["status", "--json"]).output().unwrap().stdout)
        .unwrap_or_default()
}

fn service(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == name).cloned())
        .unwrap_or_default()
}

/// Waits until `status` turns `name` red for its full volume; returns the reason.
fn wait_red_for_volume(t: &TestLab, name: &str, volume: &str) -> String {
    let reason =
        wait_for(&format!("status to call {volume} full"), Duration::from_secs(30), || {
            let s = service(&status(t), name);
            let reason = s["light"]["reason"].as_str().unwrap_or_default().to_string();
            (s["light"]["health"] == "red" && reason.contains("cannot write")).then_some(reason)
        });
    eprintln!("status: {name}: {reason}");
    assert!(
        reason.contains(&format!("volume `{volume}`")) && reason.contains("free space there"),
        "{reason}"
    );
    reason
}

async fn rows(lab: &labctl::ops::lab::Lab) -> Option<i64> {
    let db = lab.database().ok()?.connect(Duration::from_secs(3)).await.ok()?;
    let row = db.query_one("SELECT count(*) FROM machine_sensors", &[]).await.ok()?;
    Some(row.get(0))
}

/// Waits until machine_sensors holds `total` rows; returns the seconds since `freed` and the
/// status report then (the job's and the service's restarts printed).
fn stored_after(
    t: &TestLab,
    rt: &tokio::runtime::Runtime,
    lab: &labctl::ops::lab::Lab,
    total: i64,
    freed: Instant,
    name: &str,
) -> (f64, serde_json::Value) {
    wait_for(
        &format!("every reading in machine_sensors after {name}'s volume was freed"),
        Duration::from_secs(480),
        || (rt.block_on(rows(lab))? >= total).then_some(()),
    );
    let secs = freed.elapsed().as_secs_f64();
    let report = status(t);
    eprintln!(
        "the lab job's restarts: {}; {name}'s container's: {}",
        report["flink"]["jobs"][0]["restarts"],
        service(&report, name)["restarts"]
    );
    (secs, report)
}

/// verify exits 0 with the topic and both tables checked (no export runs here, so the lake
/// has nothing to check).
fn assert_topic_and_tables_agree(t: &TestLab, after: &str) {
    let (code, hops, report) = verify(t);
    assert_eq!(code, Some(0), "verify after {after}: {hops:?}\n{report:#}");
    let checked: Vec<_> = report["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["checked"] == true)
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(checked, ["topic -> machine_sensors", "machine_sensors -> sensor_aggregates"]);
}

#[test]
fn full_disks_lose_nothing_and_heal_by_themselves() {
    let t = TestLab::new("disk").with_env("LABCTL_INGEST_ENABLED", "false");
    let db_volume = tmpfs_volume(&t, "db-data");
    let broker_volume = tmpfs_volume(&t, "broker-data");
    let _holder = Holder::start(&t, &[&db_volume, &broker_volume]);
    t.ok(&["up"]);
    let lab = t.lab();
    let rt = rt();
    t.ok(&["submit", "flink"]);

    // ========== 1. the database's volume full while the job writes =========================
    // The first part of a 4-hour backfill, stored; status shows the volume, not yet a problem.
    t.ok(&["ingest", "--backfill", "4h", "--no-live", "--count", "9000"]);
    wait_for("the first readings in machine_sensors", Duration::from_secs(120), || {
        (rt.block_on(rows(&lab))? >= 9000).then_some(())
    });
    let db = service(&status(&t), "timescaledb");
    let vols = db["volumes"].as_array().cloned().unwrap_or_default();
    assert_eq!(vols.len(), 1, "{db:#}");
    assert_eq!(vols[0]["volume"], db_volume.as_str());
    assert_eq!(vols[0]["total_bytes"], VOLUME_MIB << 20, "{db:#}");
    assert_eq!(db["light"]["health"], "green", "{db:#}");

    let filler = Filler::fill(&db_volume);
    wait_red_for_volume(&t, "timescaledb", &db_volume);
    let text =
        String::from_utf8_lossy(&t.command(&["status"]).output().unwrap().stdout).to_string();
    assert!(text.contains("cannot write"), "the text report says it too:\n{text}");
    // The rest of the backfill arrives while the disk is full: the job cannot store it.
    t.ok(&["ingest", "--backfill", "4h", "--no-live"]);
    let total = topic_total(&rt, &lab).unwrap();
    std::thread::sleep(Duration::from_secs(20));
    let stuck = rt.block_on(rows(&lab));
    assert!(stuck.is_none_or(|n| n < total), "{stuck:?} of {total} rows with a full disk");
    // Space freed: everything arrives by itself (no command), and every hop agrees.
    drop(filler);
    let freed = Instant::now();
    let (caught_up, report) = stored_after(&t, &rt, &lab, total, freed, "timescaledb");
    assert_eq!(service(&report, "timescaledb")["light"]["health"], "green", "{report:#}");
    assert_topic_and_tables_agree(&t, "a full database volume");
    eprintln!(
        "MEASURE | the database's volume full while the job writes | {VOLUME_MIB} MiB tmpfs filled, then the filler removed | status red naming the volume; every reading stored once after; verify green | all {total} readings stored {caught_up:.1} s after the space was freed"
    );

    // ========== 2. the broker's volume full while the generator produces ===================
    // The generator live on this host: it resumes where the topic ends and produces a reading
    // per machine and sensor every 5 s; its deliveries never time out.
    let before = topic_total(&rt, &lab).unwrap();
    let ingest = t
        .command(&["ingest", "--backfill", "4h", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the generator to produce live", Duration::from_secs(60), || {
        (topic_total(&rt, &lab)? >= before + 9).then_some(())
    });
    let filler = Filler::fill(&broker_volume);
    wait_red_for_volume(&t, "broker", &broker_volume);
    std::thread::sleep(Duration::from_secs(15));
    drop(filler);
    let freed = Instant::now();
    // The broker back (restarted by its restart policy if it stopped), taking appends again.
    wait_for("the topic to grow again", Duration::from_secs(300), || {
        let n = topic_total(&rt, &lab)?;
        std::thread::sleep(Duration::from_secs(6));
        (topic_total(&rt, &lab)? > n).then_some(())
    });
    let producing_again = freed.elapsed().as_secs_f64();
    // Stopped as a user stops it: SIGTERM, it flushes and reports what the broker acknowledged.
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(ingest.id() as i32, libc::SIGTERM) }, 0);
    let out = ingest.wait_with_output().unwrap();
    assert!(out.status.success(), "the generator after the broker's full disk: {}", out.status);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["delivered"], summary["produced"], "{summary}");
    let total = topic_total(&rt, &lab).unwrap();
    assert_eq!(
        total - before,
        summary["delivered"].as_i64().unwrap(),
        "every delivery acknowledged by the broker is in the topic, once: {summary}"
    );
    let (caught_up, report) = stored_after(&t, &rt, &lab, total, freed, "broker");
    // Yellow at most: a broker that stopped on its full disk and was restarted says so.
    let broker = service(&report, "broker");
    assert_ne!(broker["light"]["health"], "red", "{broker:#}");
    assert!(!broker["light"]["reason"].as_str().unwrap().contains("full"), "{broker:#}");
    assert_topic_and_tables_agree(&t, "a full broker volume");
    eprintln!(
        "MEASURE | the broker's volume full while the generator produces | {VOLUME_MIB} MiB tmpfs filled, then the filler removed | status red naming the volume; every reading the generator made meanwhile delivered once; verify green | the topic growing again {producing_again:.1} s, all {total} readings stored {caught_up:.1} s after the space was freed"
    );
}
