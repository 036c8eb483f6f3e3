//! The command line: one module per command, each taking its parsed arguments and a config.

pub mod bench;
mod console;
mod demo;
mod down;
pub mod flink;
mod images;
pub mod ingest;
mod lake;
mod logs;
mod plot;
mod render;
mod scale;
pub mod spark;
pub(crate) mod status;
mod up;
mod verify;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::model::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "labctl",
    version,
    about = "Stand up, feed and inspect the IIoT streaming lab (Kafka-API broker, TimescaleDB, Flink, Spark, Delta Lake on Azurite)",
    after_help = "Configuration: defaults, then labctl.toml (or --config), then LABCTL_* variables \
                  (e.g. LABCTL_FLINK_TASKMANAGERS=2). Logs: RUST_LOG=labctl=debug."
)]
pub struct Cli {
    /// Config file (default: ./labctl.toml if it exists).
    #[arg(long, global = true, env = "LABCTL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Lab name: prefix of its containers, network and volumes (overrides the config).
    #[arg(long, short = 'p', global = true, value_name = "NAME")]
    pub project: Option<String>,
    /// More log output (same as RUST_LOG=labctl=debug).
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole lab end to end: up, ingest, Flink job, wait for the backfill, Spark export, summary.
    Demo(demo::Args),
    /// Build what is missing, start every service and wait until each really works.
    Up(up::Args),
    /// Stop and remove the lab's containers and network (data volumes stay unless --volumes).
    Down(down::Args),
    /// Resize a running lab's Flink TaskManagers or Spark workers; the new size is remembered.
    Scale(scale::Args),
    /// Where every service stands.
    Status(status::Args),
    /// Produce synthetic sensor readings into the lab's topic (backfill, then live).
    Ingest(ingest::Args),
    /// Submit a job: `flink` (the streaming aggregation) or `spark` (the export to the lake).
    #[command(subcommand)]
    Submit(SubmitCommand),
    /// The Flink cluster's jobs.
    #[command(subcommand)]
    Flink(flink::FlinkCommand),
    /// Spark export submissions.
    #[command(subcommand)]
    Spark(spark::SparkCommand),
    /// Housekeeping of the lake's Delta tables (vacuum).
    #[command(subcommand)]
    Lake(lake::Command),
    /// Prove that no reading was lost or doubled: topic, hypertables and lake compared per machine, sensor and UTC day.
    Verify(verify::Args),
    /// Show a service's logs.
    Logs(logs::Args),
    /// A picture of the data: recent 1-minute windows per machine and sensor, as an SVG file.
    Plot(plot::Args),
    /// The lab in one local web page: pipeline, topic browser, jobs, data and services, live.
    Console(console::Args),
    /// Print files derived from the stack definition (compose file, init-db.sql).
    Render(render::Args),
    /// Build or inspect the lab's images.
    #[command(subcommand)]
    Images(images::Command),
    /// Benchmarks against named baselines, in one run (a running lab is needed).
    Bench(bench::Args),
    /// Print the effective configuration (defaults + labctl.toml + LABCTL_*), as TOML.
    Config,
}

#[derive(Debug, Subcommand)]
pub enum SubmitCommand {
    /// The streaming job: Kafka source, raw readings and 1-minute aggregates into TimescaleDB.
    Flink(flink::SubmitArgs),
    /// The batch export: TimescaleDB over JDBC to a Delta table on Azurite, by year/month/day.
    Spark(spark::SubmitArgs),
}

pub fn load_config(cli: &Cli) -> Result<Config> {
    let mut config = Config::load(cli.config.as_deref(), std::env::vars())?;
    if let Some(p) = &cli.project {
        config.project = p.clone();
        config.validate()?;
    }
    Ok(config)
}

/// The program: arguments, logging, the async runtime, and errors as one line a user can act
/// on followed by their causes.
///
/// The runtime is driven here, not in `main.rs`: a binary crate that polls a future of this
/// crate instantiates the poll code of everything it awaits again in the binary (release builds
/// do not share generics across crates), which made the one-page `main.rs` compile for ~110 s,
/// the last step of every cold start.
pub fn main() -> ExitCode {
    let args = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if args.verbose { "labctl=debug,info" } else { "warn" })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let config = load_config(&cli)?;
    match cli.command {
        Command::Demo(a) => demo::run(config, cli.config.clone(), a).await,
        Command::Up(a) => up::run(config, a).await,
        Command::Down(a) => down::run(config, a).await,
        Command::Scale(a) => scale::run(config, a).await,
        Command::Status(a) => status::run(config, a).await,
        Command::Ingest(a) => ingest::run(config, a).await,
        Command::Submit(SubmitCommand::Flink(a)) => flink::submit(config, a).await,
        Command::Submit(SubmitCommand::Spark(a)) => spark::submit(config, a).await,
        Command::Flink(c) => flink::command(config, c).await,
        Command::Spark(c) => spark::command(config, c).await,
        Command::Lake(c) => lake::run(config, c).await,
        Command::Verify(a) => verify::run(config, a).await,
        Command::Logs(a) => logs::run(config, a).await,
        Command::Plot(a) => plot::run(config, a).await,
        Command::Console(a) => {
            let relaunch =
                console::Relaunch { config: cli.config.clone(), project: config.project.clone() };
            console::run(config, relaunch, a).await
        }
        Command::Render(a) => render::run(config, a).await,
        Command::Images(c) => images::run(config, c).await,
        Command::Bench(c) => {
            let relaunch =
                console::Relaunch { config: cli.config.clone(), project: config.project.clone() };
            bench::run(config, relaunch, c).await
        }
        Command::Config => {
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A spinner-style progress line; hidden automatically when stderr is not a terminal.
pub fn spinner(multi: &indicatif::MultiProgress, prefix: &str) -> indicatif::ProgressBar {
    let pb = multi.add(indicatif::ProgressBar::new_spinner());
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner:.cyan} {prefix:<18.bold} {elapsed:>4} {wide_msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    pb.set_prefix(prefix.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// A spinner is where ops report a task's progress on the command line.
impl crate::progress::Progress for indicatif::ProgressBar {
    fn set(&self, msg: &str) {
        self.set_message(msg.to_string());
    }
    fn note(&self, msg: &str) {
        if self.is_hidden() || self.is_finished() {
            eprintln!("{msg}");
        } else {
            self.println(msg);
        }
    }
    fn advance(&self, done: u64, total: u64) {
        self.set_length(total.max(done));
        self.set_position(done);
    }
    fn done(&self, msg: &str) {
        finish(self, msg.to_string());
    }
    fn failed(&self, msg: &str) {
        self.abandon_with_message(msg.to_string());
    }
    fn clear(&self) {
        self.finish_and_clear();
    }
}

/// One spinner per task, stacked.
impl crate::progress::Tasks for indicatif::MultiProgress {
    fn task(&self, name: &str) -> Box<dyn crate::progress::Progress> {
        Box::new(spinner(self, name))
    }
    fn note(&self, msg: &str) {
        if self.is_hidden() {
            eprintln!("{msg}");
        } else {
            let _ = self.println(msg);
        }
    }
}

/// Ends a progress line with a final message that also reaches non-terminal output.
pub fn finish(pb: &indicatif::ProgressBar, msg: String) {
    if pb.is_hidden() {
        eprintln!("{:<18} {msg}", pb.prefix());
    }
    pb.finish_with_message(msg);
}
