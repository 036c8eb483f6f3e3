//! `labctl images`: build the lab's images, make the base image, list tags.

use std::process::ExitCode;

use anyhow::Result;
use indicatif::MultiProgress;

use super::{finish, spinner};
use crate::stack::ImageSpec;
use crate::{
    clients::docker::{
        images::{image_tag, BASE_IMAGE},
        Runtime,
    },
    model::config::Config,
    stack::IMAGES,
};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Build images whose inputs changed (all with --force).
    Build {
        /// Rebuild from scratch, without the engine's layer cache, even when an image with the
        /// same input hash exists (the base image and the host's jar cache stay; see `bootstrap`).
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
    /// Remove images labctl built that this build no longer uses (older input hashes, copies a
    /// rebuild left untagged). Images a container still uses are kept. Another labctl version
    /// needing one of them rebuilds it.
    Prune {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        /// Only old copies of these images (broker, flink, ...); all by default.
        names: Vec<String>,
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
            let specs: Vec<&'static ImageSpec> = IMAGES
                .iter()
                .filter(|i| names.is_empty() || names.iter().any(|n| n == i.name))
                .collect();
            for (name, tag, built) in
                crate::ops::reconcile::build_images(&rt, &specs, force, &multi).await?
            {
                if !built {
                    eprintln!("{name:<18} {tag} cached");
                }
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
                    println!(
                        "{:<12} {:<32} {}",
                        r["image"].as_str().unwrap_or(""),
                        r["tag"].as_str().unwrap_or(""),
                        if r["present"] == true { "present" } else { "missing" }
                    );
                }
            }
        }
        Command::Prune { dry_run, json, names } => prune(&rt, dry_run, json, &names).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn prune(rt: &Runtime, dry_run: bool, json: bool, names: &[String]) -> Result<()> {
    let mut rows = Vec::new();
    let (mut freed, mut removed) = (0i64, 0usize);
    let stale = rt
        .stale_images()
        .await?
        .into_iter()
        .filter(|i| names.is_empty() || names.contains(&i.image));
    for img in stale {
        let name = if img.tags.is_empty() {
            format!("{} (untagged {})", img.image, short_id(&img.id))
        } else {
            img.tags.join(", ")
        };
        let outcome = if !img.used_by.is_empty() {
            format!("kept: used by {}", img.used_by.join(", "))
        } else if dry_run {
            "would be removed".to_string()
        } else {
            match rt.remove_image(&img.id).await {
                Ok(()) => {
                    freed += img.size_bytes;
                    removed += 1;
                    "removed".to_string()
                }
                Err(e) => format!("kept: {e:#}"),
            }
        };
        if !json {
            println!("{name:<40} {:>6} MB  {outcome}", img.size_bytes / 1_000_000);
        }
        rows.push(serde_json::json!({"id": img.id, "image": img.image, "tags": img.tags, "size_bytes": img.size_bytes, "used_by": img.used_by, "outcome": outcome}));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"dry_run": dry_run, "removed": removed, "freed_bytes": freed, "images": rows})
            )?
        );
    } else if rows.is_empty() {
        println!("no stale images: every labctl image present is one this build uses");
    } else if !dry_run {
        println!(
            "removed {removed} image(s), up to {} MB (layers shared with kept images stay)",
            freed / 1_000_000
        );
    }
    Ok(())
}

fn short_id(id: &str) -> &str {
    let hex = id.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}
