//! Images built here, on one Debian 12 base. An image's tag is a hash of its build inputs (the
//! Dockerfile and the files it copies, all embedded in this binary), so an unchanged image is
//! never rebuilt and a changed one always is.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use bollard::{
    container::ListContainersOptions,
    image::{
        BuildImageOptions, CreateImageOptions, ListImagesOptions, RemoveImageOptions,
        TagImageOptions,
    },
};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::Runtime;
use crate::{
    progress::Progress,
    stack::{assets, HostBinary, ImageSpec},
};

pub const BASE_IMAGE: &str = "labctl/debian:bookworm";
/// Tried first where a registry is reachable: `debian:bookworm-slim` by digest, so a tag moved
/// on the registry cannot change what every image is built on. The digest is the one the tag
/// resolved to in a public build log of 2026-09 (no registry answers on the machine this was
/// written on). Where it is gone from the registry the pull fails and debootstrap makes the
/// base, as without a registry; a newer one goes here by hand.
const REGISTRY_BASE: &str =
    "debian@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251";
const REGISTRY_BASE_NAME: &str = "debian:bookworm-slim";
/// Lines of build output shown when a step fails.
const FAILED_STEP_LINES: usize = 40;

pub fn image_tag(spec: &ImageSpec) -> String {
    format!("labctl/{}:{}", spec.name, input_hash(spec))
}

/// Hash of everything an image is built from, except the host's CA bundle (an environment
/// fact, not an input: the same Dockerfile behind a proxy or not gives the same image).
pub fn input_hash(spec: &ImageSpec) -> String {
    let mut h = Sha256::new();
    h.update(spec.dockerfile.as_bytes());
    for (path, bytes) in context_files(spec) {
        h.update(path.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    // A pinned jar set is hashed through its pom and sums, which are among the inputs.
    match spec.host_binary {
        // The binary itself changes with every build; it is tracked by a label instead (see
        // `ensure_image`), so the tag, and the compose file naming it, stay put.
        Some(HostBinary::Labctl) => {
            h.update(concat!("labctl ", env!("CARGO_PKG_VERSION")).as_bytes())
        }
        None => {}
    }
    hex::encode(&h.finalize()[..6])
}

fn context_files(spec: &ImageSpec) -> Vec<(&'static str, &'static [u8])> {
    assets::FILES
        .iter()
        .filter(|(path, _)| {
            *path == spec.dockerfile
                || spec.inputs.iter().any(|i| *path == *i || path.starts_with(&format!("{i}/")))
        })
        .copied()
        .collect()
}

/// The host's CA bundle, so builds work behind an intercepting TLS proxy.
fn host_ca_bundle() -> Vec<u8> {
    let path = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    std::fs::read(&path).unwrap_or_default()
}

/// Label on images that embed the labctl binary: the binary's hash.
const BINARY_LABEL: &str = "labctl.binary-sha256";

fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

fn build_context(
    spec: &ImageSpec,
    host_binary: Option<&Path>,
    jars: &[(String, Vec<u8>)],
) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, path, bytes)
            .with_context(|| format!("adding {path} to the build context"))
    };
    for (path, bytes) in context_files(spec) {
        let mode = if path.ends_with(".sh") { 0o755 } else { 0o644 };
        add(path, bytes, mode)?;
    }
    add(".labctl/host-ca.crt", &host_ca_bundle(), 0o644)?;
    if let Some(bin) = host_binary {
        let bytes = std::fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
        add(".labctl/labctl", &bytes, 0o755)?;
    }
    for (name, bytes) in jars {
        add(&format!(".labctl/jars/{name}"), bytes, 0o644)?;
    }
    Ok(b.into_inner()?)
}

/// An image labctl built that this labctl no longer uses: an older input hash of one of the
/// stack's images, or a copy a rebuild left untagged.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StaleImage {
    pub id: String,
    pub image: String,
    pub tags: Vec<String>,
    pub size_bytes: i64,
    /// Containers (of any project) created from it; the engine refuses to remove it then.
    pub used_by: Vec<String>,
}

impl Runtime {
    /// Images labelled as labctl's whose tags are none of this build's: every rebuild after a
    /// change leaves the previous one behind (300 MB to 1 GB each).
    pub async fn stale_images(&self) -> Result<Vec<StaleImage>> {
        let current: Vec<String> = crate::stack::IMAGES.iter().map(image_tag).collect();
        let filters = HashMap::from([("label".to_string(), vec!["labctl.image".to_string()])]);
        let images = self
            .docker
            .list_images(Some(ListImagesOptions { all: false, filters, ..Default::default() }))
            .await
            .context("listing images")?;
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions::<String> {
                all: true,
                ..Default::default()
            }))
            .await
            .context("listing containers")?;
        let mut stale = Vec::new();
        for img in images {
            if img.repo_tags.iter().any(|t| current.contains(t)) {
                continue;
            }
            let used_by = containers
                .iter()
                .filter(|c| c.image_id.as_deref() == Some(img.id.as_str()))
                .flat_map(|c| c.names.clone().unwrap_or_default())
                .map(|n| n.trim_start_matches('/').to_string())
                .collect();
            let tags = img.repo_tags.into_iter().filter(|t| t != "<none>:<none>").collect();
            let image = img.labels.get("labctl.image").cloned().unwrap_or_default();
            stale.push(StaleImage { id: img.id, image, tags, size_bytes: img.size, used_by });
        }
        stale.sort_by(|a, b| (&a.image, &a.tags).cmp(&(&b.image, &b.tags)));
        Ok(stale)
    }

    pub async fn remove_image(&self, id: &str) -> Result<()> {
        self.docker
            .remove_image(id, Some(RemoveImageOptions { force: false, noprune: false }), None)
            .await
            .with_context(|| format!("removing image {id}"))?;
        Ok(())
    }

    pub async fn image_exists(&self, tag: &str) -> bool {
        self.docker.inspect_image(tag).await.is_ok()
    }

    /// Makes sure the base image exists: pulled where a registry answers, else debootstrapped.
    pub async fn ensure_base(&self, progress: &dyn Progress) -> Result<()> {
        if self.image_exists(BASE_IMAGE).await {
            return Ok(());
        }
        progress.set(&format!("pulling {REGISTRY_BASE_NAME} by digest"));
        match self.pull(REGISTRY_BASE).await {
            Ok(()) => {
                self.docker
                    .tag_image(
                        REGISTRY_BASE,
                        Some(TagImageOptions { repo: "labctl/debian", tag: "bookworm" }),
                    )
                    .await
                    .context("tagging the base image")?;
                return Ok(());
            }
            Err(e) => {
                let msg = format!(
                    "no {REGISTRY_BASE_NAME} from a registry ({REGISTRY_BASE}: {e:#}); making the base image with debootstrap instead"
                );
                progress.note(&format!("note: {msg}"));
                tracing::info!("{msg}");
            }
        }
        self.bootstrap_base(progress).await
    }

    async fn pull(&self, image: &str) -> Result<()> {
        let fut = async {
            let mut s = self.docker.create_image(
                Some(CreateImageOptions { from_image: image, ..Default::default() }),
                None,
                None,
            );
            while let Some(item) = s.next().await {
                item?;
            }
            Ok::<_, bollard::errors::Error>(())
        };
        tokio::time::timeout(Duration::from_secs(120), fut)
            .await
            .map_err(|_| anyhow!("pull timed out"))??;
        Ok(())
    }

    /// `debootstrap --variant=minbase bookworm` into a temporary folder, imported as the base.
    pub async fn bootstrap_base(&self, progress: &dyn Progress) -> Result<()> {
        which("debootstrap").ok_or_else(|| {
            anyhow!("the base image must be made with debootstrap, which is not installed: `apt-get install debootstrap` (as root)")
        })?;
        let dir = tempfile_dir("labctl-rootfs")?;
        let rootfs = dir.join("bookworm");
        progress.set("debootstrap bookworm (about a minute)");
        let out = tokio::process::Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&rootfs)
            .arg("http://deb.debian.org/debian")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .context("running debootstrap")?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            bail!(
                "debootstrap failed (needs root and Debian's archive):\n{}",
                tail_lines(&String::from_utf8_lossy(&[out.stdout, out.stderr].concat()), 20)
            );
        }
        progress.set("importing the base image");
        let tar = tokio::process::Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .output()
            .await
            .context("packing the root file system")?;
        let _ = std::fs::remove_dir_all(&dir);
        if !tar.status.success() {
            bail!("tar of the debootstrapped root file system failed");
        }
        let mut s = self.docker.create_image(
            Some(CreateImageOptions {
                from_src: "-",
                repo: "labctl/debian",
                tag: "bookworm",
                ..Default::default()
            }),
            Some(tar.stdout.into()),
            None,
        );
        while let Some(item) = s.next().await {
            item.context("importing the base image")?;
        }
        Ok(())
    }

    /// Builds the image unless an image with the same input hash exists. Returns its tag and
    /// whether it was built.
    pub async fn ensure_image(
        &self,
        spec: &ImageSpec,
        force: bool,
        progress: &dyn Progress,
    ) -> Result<(String, bool)> {
        let tag = image_tag(spec);
        let binary = match spec.host_binary {
            Some(HostBinary::Labctl) => {
                Some(std::env::current_exe().context("locating the labctl binary")?)
            }
            None => None,
        };
        let binary_sha = binary.as_deref().map(file_sha256).transpose()?;
        if !force {
            if let Ok(img) = self.docker.inspect_image(&tag).await {
                let label =
                    img.config.and_then(|c| c.labels).and_then(|l| l.get(BINARY_LABEL).cloned());
                if binary_sha.is_none() || label == binary_sha {
                    return Ok((tag, false));
                }
            }
        }
        let jars = match spec.jars {
            Some(set) => set.resolve(&|m: String| progress.set(&m)).await?,
            None => vec![],
        };
        let mut labels = HashMap::from([("labctl.image".to_string(), spec.name.to_string())]);
        if let Some(sha) = &binary_sha {
            labels.insert(BINARY_LABEL.to_string(), sha.clone());
        }
        let context = build_context(spec, binary.as_deref(), &jars)?;
        progress.set(&format!("building {tag}"));
        let mut stream = self.docker.build_image(
            BuildImageOptions {
                dockerfile: spec.dockerfile.to_string(),
                t: tag.clone(),
                rm: true,
                forcerm: true,
                // --force is for a real rebuild (new Debian and PyPI packages, a suspect layer):
                // with the layer cache every step would be reused and nothing would change.
                nocache: force,
                buildargs: HashMap::from([("BASE_IMAGE".to_string(), BASE_IMAGE.to_string())]),
                labels,
                ..Default::default()
            },
            None,
            Some(context.into()),
        );
        let mut log = String::new();
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(i) => i,
                Err(e) => bail!(
                    "building {tag} from {} failed: {e}\n{}",
                    spec.dockerfile,
                    tail_lines(&log, FAILED_STEP_LINES)
                ),
            };
            if let Some(s) = info.stream {
                log.push_str(&s);
                if let Some(line) = s.lines().rev().find(|l| !l.trim().is_empty()) {
                    progress.set(&format!("{}: {}", spec.name, truncate(line.trim(), 70)));
                }
            }
            if let Some(err) = info.error {
                bail!(
                    "building {tag} from {} failed: {}\n--- last build output ---\n{}",
                    spec.dockerfile,
                    err.trim(),
                    tail_lines(&log, FAILED_STEP_LINES)
                );
            }
        }
        if !self.image_exists(&tag).await {
            bail!(
                "building {tag} ended without an image:\n{}",
                tail_lines(&log, FAILED_STEP_LINES)
            );
        }
        Ok((tag, true))
    }
}

pub(crate) fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

fn tempfile_dir(prefix: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n).collect::<String>() + "…"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::IMAGES;

    #[test]
    fn every_image_has_its_dockerfile_embedded() {
        for spec in IMAGES {
            assert!(
                context_files(spec).iter().any(|(p, _)| *p == spec.dockerfile),
                "{} missing",
                spec.dockerfile
            );
        }
    }

    #[test]
    fn tags_are_stable_and_distinct() {
        let tags: Vec<_> = IMAGES.iter().map(image_tag).collect();
        assert_eq!(tags, IMAGES.iter().map(image_tag).collect::<Vec<_>>());
        let mut d = tags.clone();
        d.dedup();
        assert_eq!(d.len(), tags.len());
    }
}
