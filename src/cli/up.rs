//! `labctl up`: arguments to an `ops::reconcile::up` request, the lab that is up to a summary
//! of where to reach each part (or JSON).

use std::process::ExitCode;

use anyhow::Result;
use indicatif::MultiProgress;

use crate::{
    model::{
        config::{Config, PortKey},
        topology,
    },
    ops::reconcile::{self, UpRequest},
    stack,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of Flink TaskManagers; remembered like `labctl scale flink-taskmanager N`.
    #[arg(long, value_name = "N")]
    taskmanagers: Option<u32>,
    /// Number of Spark workers; remembered like `labctl scale spark-worker N`.
    #[arg(long, value_name = "N")]
    spark_workers: Option<u32>,
    /// Do not start the generator (`labctl ingest` can be run by hand).
    #[arg(long)]
    no_ingest: bool,
    /// Rebuild every image even if one with the same inputs exists.
    #[arg(long)]
    rebuild: bool,
    /// Print a JSON summary (ports, URLs, timings) on stdout when done.
    #[arg(long)]
    json: bool,
}

pub async fn run(config: Config, args: Args) -> Result<ExitCode> {
    let req = UpRequest {
        taskmanagers: args.taskmanagers,
        spark_workers: args.spark_workers,
        no_ingest: args.no_ingest,
        rebuild: args.rebuild,
    };
    let multi = MultiProgress::new();
    let (lab, report) = reconcile::up(config, &req, &multi).await?;
    let total = report.seconds.total;
    let changed = report.containers_changed;
    let secure = &report.broker_sasl_ssl;
    let urls = [("Flink UI", &report.flink_ui), ("Spark UI", &report.spark_ui)];
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!(
            "lab `{}` is up ({} container(s) changed) in {total:.1} s",
            lab.stack.project, changed
        );
        for (what, url) in urls {
            if let Some(u) = url {
                eprintln!("  {what:<9} {u}");
            }
        }
        if let (Some(f), Some(url)) = (&report.flink_client, &report.flink_ui) {
            eprintln!(
                "  Flink     mutual TLS: `curl --cert {} --cacert {} {url}/overview`",
                f.certificate, f.ca_file
            );
        }
        let p = &lab.state.ports;
        let c = &lab.config;
        let host = |k: PortKey| lab.stack.port_host(k).unwrap_or("127.0.0.1");
        let topic = &c.broker.topic;
        match lab.stack.external_for(stack::BROKER) {
            Some(e) => eprintln!("  broker    {} (external; topic `{topic}`)", e.address),
            None => eprintln!("  broker    {} (topic `{topic}`)", lab.broker()?.bootstrap),
        }
        if let Some(s) = secure {
            eprintln!(
                "  broker    SASL_SSL {} (lab network: {}), user `{}`, SCRAM-SHA-256/512 (password: `labctl status --show-secrets`), CA {}",
                s.bootstrap, s.cluster_bootstrap, s.user, s.ca_file
            );
        }
        match lab.stack.external_for(stack::DATABASE) {
            Some(e) => eprintln!("  database  {} (external)", e.address),
            None => eprintln!(
                "  database  postgresql://{}@{}:{}/{} (password: `labctl status --show-secrets`)",
                c.database.user,
                host(PortKey::Database),
                p.database,
                c.database.name
            ),
        }
        match lab.stack.external_for(stack::AZURITE) {
            Some(e) => eprintln!("  lake      {} (external)", e.address),
            None => eprintln!(
                "  azurite   http://{}:{}/devstoreaccount1",
                host(PortKey::Azurite),
                p.azurite
            ),
        }
        for e in lab
            .stack
            .external
            .iter()
            .filter(|e| matches!(e.part, topology::Part::Flink | topology::Part::Spark))
        {
            eprintln!("  {:<9} {} (external)", e.name, e.address);
        }
        if c.ingest.enabled && lab.stack.service(stack::INGEST).is_none() {
            eprintln!("  no generator service: the external broker wants SASL, whose password stays out of containers; feed it with `labctl ingest`");
        }
    }
    Ok(ExitCode::SUCCESS)
}
