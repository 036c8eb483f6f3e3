//! `labctl render`: the files derived from the stack definition.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};

use crate::{
    model::{config::Config, schema},
    ops::{render, spark},
    stack::{state::State, Stack},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    what: What,
    /// Write to this file instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Exit non-zero if FILE (--output) differs from what would be rendered; write nothing.
    #[arg(long, requires = "output")]
    check: bool,
    /// With `flink`: the plan Flink's planner makes of the job (EXPLAIN of its statement set),
    /// computed in the lab's JobManager, instead of the SQL.
    #[arg(long)]
    explain: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum What {
    /// docker-compose.yml for the configured stack.
    Compose,
    /// init-db.sql: both tables and hypertables.
    InitDb,
    /// The Flink SQL job (with the database password left out).
    Flink,
    /// The Spark export's config (with the database password left out).
    Spark,
}

pub async fn run(config: Config, args: Args) -> Result<ExitCode> {
    if args.explain && !matches!(args.what, What::Flink) {
        anyhow::bail!("--explain goes with `labctl render flink` only");
    }
    let text = match args.what {
        What::Flink if args.explain => crate::ops::flink::explain::explain(&config).await?,
        What::Compose => {
            // Rendering needs no running lab: use remembered ports if any, else the config's.
            let state = State::load(&config.project)?
                .unwrap_or_else(|| State { ports: config.ports.clone(), ..Default::default() });
            render::compose(&Stack::new(&config, &state))?
        }
        What::InitDb => schema::init_db_sql(),
        // The password is filled in at submit time only; rendered output never shows it.
        What::Flink => crate::ops::flink::render(&config, None)?,
        What::Spark => {
            let state = State { ports: config.ports.clone(), ..Default::default() };
            let lab = crate::ops::lab::Lab::new(config.clone(), state);
            let req = spark::ExportRequest { partitions: 4, ..Default::default() };
            spark::render_config(
                &lab,
                &req,
                &spark::JobSecrets::placeholders(),
                &spark::Overrides::default(),
                Some("<filled in by labctl submit spark>"),
            )?
        }
    };
    match (&args.output, args.check) {
        (Some(path), true) => {
            let current = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            if current != text {
                eprintln!(
                    "{} is out of date; regenerate it with `labctl render {} -o {}`",
                    path.display(),
                    what_name(args.what),
                    path.display()
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        (Some(path), false) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?
        }
        (None, _) => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn what_name(w: What) -> &'static str {
    match w {
        What::Compose => "compose",
        What::InitDb => "init-db",
        What::Flink => "flink",
        What::Spark => "spark",
    }
}
