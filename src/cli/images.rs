//! `labctl images`: build the lab's images, make the base image, list tags.

use std::process::ExitCode;

use anyhow::Result;
use indicatif::MultiProgress;

use super::{finish, spinner};
use crate::{
    config::Config,
    docker::{images::{image_tag, BASE_IMAGE}, Runtime},
    stack::IMAGES,
};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Build images whose inputs changed (all with --force).
    Build {
        /// Rebuild even when an image with the same input hash exists.
        #[arg(long)]
        force: bool,
        /// Only these images (broker, timescaledb, flink, spark, azurite).
        names: Vec<String>,
    },
    /// Make the Debian 12 base image with debootstrap (needs root) and import it.
    Bootstrap,
    /// List the images this build of labctl uses and whether they exist.
    List {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(_config: Config, cmd: Command) -> Result<ExitCode> {
    let rt = Runtime::connect().await?;
    let multi = MultiProgress::new();
    match cmd {
        Command::Build { force, names } => {
            for n in &names {
                if !IMAGES.iter().any(|i| i.name == n) {
                    let all: Vec<_> = IMAGES.iter().map(|i| i.name).collect();
                    anyhow::bail!("unknown image `{n}`; the lab's images are: {}", all.join(", "));
                }
            }
            let pb = spinner(&multi, "base");
            rt.ensure_base(&pb).await?;
            finish(&pb, format!("{BASE_IMAGE} present"));
            for spec in IMAGES.iter().filter(|i| names.is_empty() || names.iter().any(|n| n == i.name)) {
                let pb = spinner(&multi, spec.name);
                let t = std::time::Instant::now();
                let (tag, built) = rt.ensure_image(spec, force, &pb).await?;
                let how = if built { format!("built in {:.0} s", t.elapsed().as_secs_f64()) } else { "cached".into() };
                finish(&pb, format!("{tag} {how}"));
            }
        }
        Command::Bootstrap => {
            let pb = spinner(&multi, "base");
            rt.bootstrap_base(&pb).await?;
            finish(&pb, format!("{BASE_IMAGE} imported"));
        }
        Command::List { json } => {
            let mut rows = Vec::new();
            for spec in IMAGES {
                let tag = image_tag(spec);
                let present = rt.image_exists(&tag).await;
                rows.push(serde_json::json!({"image": spec.name, "tag": tag, "present": present, "dockerfile": spec.dockerfile}));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for r in rows {
                    println!("{:<12} {:<32} {}", r["image"].as_str().unwrap_or(""), r["tag"].as_str().unwrap_or(""), if r["present"] == true { "present" } else { "missing" });
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
