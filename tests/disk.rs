//! A full disk under the database while the Flink job writes: `status` names the volume and
//! the fix, nothing already stored is lost or damaged, and the pipeline resumes by itself once
//! space is freed. The database's volume is a small tmpfs made before `up` (labctl uses a
//! volume of its name as it finds it); the test fills it with a file of its own through the
//! volume's mount point on this host, and frees the space by removing that file.

mod common;

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{docker, rt, topic_total, verify, wait_for, TestLab};

const VOLUME_MIB: u64 = 320;

/// Writes zeros into `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
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
    written
}

/// `status --json` (it exits non-zero while a light is red; the report is what counts).
fn status(t: &TestLab) -> serde_json::Value {
    serde_json::from_slice(&t.command(&["status", "--json"]).output().unwrap().stdout)
        .unwrap_or_default()
}

fn database_service(report: &serde_json::Value) -> serde_json::Value {
    report["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == "timescaledb").cloned())
        .unwrap_or_default()
}

async fn rows(lab: &labctl::ops::lab::Lab) -> Option<i64> {
    let db = lab.database().ok()?.connect(Duration::from_secs(3)).await.ok()?;
    let row = db.query_one("SELECT count(*) FROM machine_sensors", &[]).await.ok()?;
    Some(row.get(0))
}

struct Filler(PathBuf);

impl Drop for Filler {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_full_database_disk_loses_nothing_and_heals_itself() {
    let t = TestLab::new("disk").with_env("LABCTL_INGEST_ENABLED", "false");
    let volume = format!("{}-db-data", t.project);
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
    t.ok(&["up"]);
    let lab = t.lab();
    let rt = rt();
    t.ok(&["submit", "flink"]);

    // The first part of a 4-hour backfill, stored; status shows the volume, not yet a problem.
    t.ok(&["ingest", "--backfill", "4h", "--no-live", "--count", "9000"]);
    wait_for("the first readings in machine_sensors", Duration::from_secs(120), || {
        (rt.block_on(rows(&lab))? >= 9000).then_some(())
    });
    let db = database_service(&status(&t));
    let vols = db["volumes"].as_array().cloned().unwrap_or_default();
    assert_eq!(vols.len(), 1, "{db:#}");
    assert_eq!(vols[0]["volume"], volume.as_str());
    assert_eq!(vols[0]["total_bytes"], VOLUME_MIB << 20, "{db:#}");
    assert_eq!(db["light"]["health"], "green", "{db:#}");

    // Full: status says which volume, that the database cannot write, and what to do.
    let mountpoint = docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", &volume]);
    let filler = Filler(Path::new(&mountpoint).join("labctl-test-filler"));
    let filled = fill(&filler.0);
    eprintln!("filled the database's volume with {} MiB", filled >> 20);
    let reason = wait_for("status to call the volume full", Duration::from_secs(30), || {
        let db = database_service(&status(&t));
        (db["light"]["health"] == "red")
            .then(|| db["light"]["reason"].as_str().unwrap().to_string())
    });
    eprintln!("status: {reason}");
    assert!(
        reason.contains(&format!("volume `{volume}`"))
            && reason.contains("cannot write")
            && reason.contains("free space there"),
        "{reason}"
    );
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
    wait_for(
        "every reading in machine_sensors after freeing space",
        Duration::from_secs(480),
        || (rt.block_on(rows(&lab))? >= total).then_some(()),
    );
    let caught_up = freed.elapsed().as_secs_f64();
    let report = status(&t);
    eprintln!(
        "the lab job's restarts: {}; the database container's: {}",
        report["flink"]["jobs"][0]["restarts"],
        database_service(&report)["restarts"]
    );
    let db = database_service(&report);
    assert_eq!(db["light"]["health"], "green", "{db:#}");
    // verify's readers: the topic, both tables (no export ran, so the lake has nothing to check).
    let (code, hops, report) = verify(&t);
    assert_eq!(code, Some(0), "verify after a full database volume: {hops:?}\n{report:#}");
    let checked: Vec<_> = report["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["checked"] == true)
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(checked, ["topic -> machine_sensors", "machine_sensors -> sensor_aggregates"]);
    eprintln!(
        "MEASURE | the database's volume full while the job writes | {VOLUME_MIB} MiB tmpfs filled, then the filler removed | status red naming the volume; every reading stored once after; verify green | all {total} readings stored {caught_up:.1} s after the space was freed"
    );
}
