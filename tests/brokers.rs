//! A three-node Kafka lab (`broker.nodes = 3`): the topic is replicated to all three nodes with
//! `min.insync.replicas = 2`, so SIGKILLing the node that leads a partition while the
//! generator backfills (idempotent, acks=all) loses and doubles nothing, and the generator
//! never stops. The topic is read back and audited independently of the generator.

mod common;

use std::time::{Duration, Instant};

use common::{
    audit, containers_diagnosis, docker, read_readings, rt, topic_ends, topic_total, wait_for,
    wait_for_explained, TestLab, INTERVAL,
};
use rdkafka::consumer::{BaseConsumer, Consumer};

const BACKFILL_SECS: i64 = 12 * 3_600;

/// One partition of the topic: (id, leader, replicas, in-sync replicas).
type PartitionLayout = (i32, i32, Vec<i32>, Vec<i32>);

/// Every partition of the topic, from the cluster's own metadata.
fn topic_layout(lab: &labctl::ops::lab::Lab) -> Option<Vec<PartitionLayout>> {
    let c: BaseConsumer =
        lab.broker().ok()?.client_config().set("group.id", "t-brokers-inspect").create().ok()?;
    let md = c.fetch_metadata(Some(&lab.config.broker.topic), Duration::from_secs(3)).ok()?;
    let t = md.topics().first()?;
    let mut v: Vec<_> = t
        .partitions()
        .iter()
        .map(|p| (p.id(), p.leader(), p.replicas().to_vec(), p.isr().to_vec()))
        .collect();
    v.sort();
    (!v.is_empty()).then_some(v)
}

#[test]
fn one_of_three_brokers_killed_while_producing_loses_nothing() {
    let t = TestLab::new("brokers")
        .with_env("LABCTL_BROKER_NODES", "3")
        .with_env("LABCTL_INGEST_BACKFILL", "12h")
        // About 30 s of backfill: the kill lands in the middle of it.
        .with_env("LABCTL_INGEST_BACKFILL_RATE", "2500");
    let rt = rt();
    let before_up = chrono::Utc::now().timestamp();
    let up = t.json(&["up", "--json"]);
    let after_up = chrono::Utc::now().timestamp();
    eprintln!("up with 3 broker nodes: {}", up["seconds"]);
    let lab = t.lab();

    let status = t.json(&["status", "--json"]);
    let names: Vec<&str> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["service"].as_str())
        .collect();
    for node in ["broker", "broker-2", "broker-3"] {
        assert!(names.contains(&node), "status lists {node}: {names:?}");
    }
    let layout = wait_for("the topic on three in-sync replicas", Duration::from_secs(60), || {
        topic_layout(&lab).filter(|l| l.iter().all(|(_, _, r, isr)| r.len() == 3 && isr.len() == 3))
    });
    eprintln!("topic layout (partition, leader, replicas, isr): {layout:?}");

    let backfill_readings = BACKFILL_SECS / INTERVAL * 9;
    let at = wait_for_explained(
        "the backfill to be under way",
        Duration::from_secs(120),
        || topic_total(&rt, &lab).filter(|n| *n > backfill_readings / 5),
        || {
            let ends = topic_ends(&rt, &lab);
            format!(
                "topic end offsets: {ends:?}\n{}",
                containers_diagnosis(&t, &["ingest", "broker"])
            )
        },
    );
    assert!(
        at < backfill_readings * 7 / 10,
        "the backfill went too fast to be interrupted ({at} of {backfill_readings})"
    );
    // The leader of partition 0: its partitions must move to another node.
    let leader = layout[0].1;
    let victim = if leader == 1 {
        format!("{}-broker-1", t.project)
    } else {
        format!("{}-broker-{leader}-1", t.project)
    };
    let killed = Instant::now();
    docker(&["kill", "-s", "KILL", &victim]);
    eprintln!("SIGKILLed {victim} (node {leader}, leader of partition 0) at {at} of {backfill_readings} readings");

    // Two nodes are enough for acks=all with min.insync.replicas 2: the backfill completes
    // while the third is down.
    let done = wait_for("the backfill to complete on two nodes", Duration::from_secs(240), || {
        topic_total(&rt, &lab)
            .filter(|n| *n >= backfill_readings)
            .map(|_| killed.elapsed().as_secs_f64())
    });
    let moved = topic_layout(&lab).unwrap();
    assert!(
        moved.iter().all(|(_, l, _, isr)| *l != leader && !isr.contains(&leader)),
        "leadership moved off node {leader}: {moved:?}"
    );
    let ingest = format!("{}-ingest-1", t.project);
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Status}} {{.RestartCount}}", &ingest]),
        "running 0",
        "the generator never stopped"
    );

    docker(&["start", &victim]);
    let rejoined = Instant::now();
    wait_for("the killed node back in every ISR", Duration::from_secs(180), || {
        topic_layout(&lab).filter(|l| l.iter().all(|(_, _, _, isr)| isr.len() == 3))
    });
    let rejoin_secs = rejoined.elapsed().as_secs_f64();

    let readings = read_readings(&lab);
    let first_range = (
        before_up / INTERVAL - BACKFILL_SECS / INTERVAL - 1,
        after_up / INTERVAL - BACKFILL_SECS / INTERVAL + 1,
    );
    let a = audit(&readings, first_range);
    eprintln!(
        "MEASURE | one of 3 brokers SIGKILLed while producing | docker kill -s KILL {victim} at {at}/{backfill_readings} readings | messages {} unique {} lost {} duplicated {} | backfill complete {done:.1} s after the kill on 2 nodes; back in every ISR {rejoin_secs:.1} s after its start",
        a.messages, a.unique, a.lost, a.duplicated
    );
    assert_eq!((a.lost, a.duplicated), (0, 0), "every reading in the topic exactly once");

    // A node that cannot reach the others (cut off the lab's network): `up` waits for it, then
    // fails naming that node and where to look, and leaves the containers for inspection.
    let node3 = format!("{}-broker-3-1", t.project);
    docker(&["network", "disconnect", &lab.stack.network, &node3]);
    wait_for("node 3 out of the cluster's metadata", Duration::from_secs(90), || {
        rt.block_on(lab.broker().ok()?.broker_ids(Duration::from_secs(3)))
            .ok()
            .filter(|ids| ids == &[1, 2])
    });
    let mut t = t;
    t.set_env("LABCTL_READY_TIMEOUT_SECS", "10");
    let out = t.run(&["up"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up succeeded with node 3 cut off:\n{err}");
    assert!(
        err.contains("2 of 3 broker nodes registered; broker-3 not joined")
            && err.contains("labctl logs broker-3"),
        "up names the node that did not join:\n{err}"
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Status}}", &node3]),
        "running",
        "left running for inspection"
    );
    t.ok(&["down", "--volumes", "--yes"]);
}
