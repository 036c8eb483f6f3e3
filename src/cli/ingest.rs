//! `labctl ingest`: arguments to an `ops::ingest::feed::Feed` (synthetic readings into the lab's
//! topic, history first, then on the wall clock), its summary to a line or JSON.

use std::{
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::{bail, Context, Result};

use crate::{
    model::{
        config::Config,
        fleet::{Fleet, MachineType, MACHINE_TYPES},
    },
    ops::{
        ingest::feed::{self, Feed},
        lab::Lab,
    },
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Machines per type.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub machines: u32,
    /// Machine types in the fleet, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "CNC,Lathe,Welder", value_name = "TYPES")]
    pub types: Vec<String>,
    /// Seed of the random model; the same seed gives the same readings bit for bit.
    #[arg(long, default_value_t = 20231010, value_name = "S")]
    pub seed: u64,
    /// Seconds between readings.
    #[arg(long, default_value_t = 5, value_name = "SECS", allow_negative_numbers = true)]
    pub interval: i64,
    /// History to backfill on a first start, e.g. 7d, 12h, 30m, 0.
    #[arg(long, default_value = "7d", value_name = "DURATION")]
    pub backfill: String,
    /// Produce the backfill at most this many readings per second (0: as fast as the broker
    /// takes them), e.g. to watch a consumer catch up.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub rate: u64,
    /// Stop after the backfill instead of following the clock.
    #[arg(long)]
    pub no_live: bool,
    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Print messages (JSON lines) to stdout instead of producing; needs no broker.
    #[arg(long)]
    pub dry_run: bool,
    /// Broker to produce to (default: the lab's, through its published port).
    #[arg(long, value_name = "HOST:PORT")]
    pub bootstrap: Option<String>,
    /// With --bootstrap: connect to RIGHT whenever the broker advertises LEFT
    /// (`host:port=host:port`, repeatable), like `broker.address_map` in the config.
    #[arg(long = "address-map", value_name = "ADVERTISED=REACHABLE", requires = "bootstrap")]
    pub address_map: Vec<String>,
    /// Topic (default: broker.topic from the config).
    #[arg(long)]
    pub topic: Option<String>,
    /// Print the final summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn fleet_from(args: &Args) -> Result<Fleet> {
    let mut types = Vec::new();
    for t in &args.types {
        let t = MachineType::parse(t.trim())?;
        if !types.iter().any(|(x, _)| *x == t) {
            types.push((t, args.machines));
        }
    }
    types.sort_by_key(|(t, _)| MACHINE_TYPES.iter().position(|x| x == t));
    Fleet::new(&types, args.seed)
}

pub async fn run(config: Config, args: Args) -> Result<ExitCode> {
    if args.interval <= 0 {
        bail!("--interval must be a positive number of seconds, got {}", args.interval);
    }
    let backfill = crate::model::duration::parse_duration(&args.backfill).context("--backfill")?;
    let fleet = fleet_from(&args)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            eprintln!("ingest: stopping, flushing what is in flight");
            stop.store(true, Ordering::Relaxed);
        });
    }
    let feed = Feed {
        fleet,
        interval: args.interval,
        backfill_secs: backfill,
        rate: args.rate,
        no_live: args.no_live,
        count: args.count,
    };
    if args.dry_run {
        let n = tokio::task::spawn_blocking(move || feed::dry_run(&feed, &stop)).await??;
        tracing::info!("printed {n} messages");
        return Ok(ExitCode::SUCCESS);
    }
    let topic = args.topic.clone().unwrap_or_else(|| config.broker.topic.clone());
    let base = match &args.bootstrap {
        Some(b) => {
            for pair in &args.address_map {
                let (from, to) = pair.split_once('=').with_context(|| format!("--address-map {pair:?}: use ADVERTISED=REACHABLE, e.g. broker:9092=127.0.0.1:19092"))?;
                let (fh, fp) = crate::model::address::parse_host_port("--address-map", from)?;
                let (th, tp) = crate::model::address::parse_host_port("--address-map", to)?;
                crate::clients::kafka::resolve::map_broker(&fh, fp, &th, tp);
            }
            let mut c = rdkafka::ClientConfig::new();
            c.set("bootstrap.servers", b);
            c
        }
        None => Lab::existing(config)?.broker()?.client_config(),
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "backfill {bar:30} {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let summary =
        tokio::task::spawn_blocking(move || feed::produce(&feed, &topic, &base, &stop, &bar))
            .await??;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    if summary.failed > 0 {
        eprintln!("ingest: {} reading(s) NOT delivered", summary.failed);
    }
    Ok(if summary.failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(4) })
}
