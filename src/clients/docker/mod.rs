//! The Docker Engine API (bollard), in the terms labctl needs: a project's network, volumes and
//! containers, labelled so that every command finds exactly what belongs to one lab.

pub mod facts;
pub mod images;
pub mod jars;

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use bollard::{
    container::{
        Config as ContainerConfig, CreateContainerOptions, ListContainersOptions, LogOutput,
        LogsOptions, RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
        UploadToContainerOptions, WaitContainerOptions,
    },
    models::{
        ContainerSummary, EndpointSettings, HostConfig, Mount as DockerMount, MountTypeEnum,
        PortBinding, RestartPolicy, RestartPolicyNameEnum,
    },
    network::{CreateNetworkOptions, ListNetworksOptions},
    volume::{CreateVolumeOptions, ListVolumesOptions},
    Docker,
};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::stack::{Secret, Service, Stack};

/// A one-off container: run to its end on a lab's network, then removed.
pub struct OneOff<'a> {
    pub name: String,
    pub project: &'a str,
    pub network: &'a str,
    pub image: &'a str,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Vec<String>,
    /// Files put into the container before it starts: (path, content).
    pub files: &'a [(&'a str, &'a [u8])],
}

pub const LABEL_PROJECT: &str = "labctl.project";
pub const LABEL_SERVICE: &str = "labctl.service";
pub const LABEL_REPLICA: &str = "labctl.replica";
/// Hash of everything a container was created from; a changed definition means recreate.
pub const LABEL_SPEC: &str = "labctl.spec";

/// How long a removal already under way in the engine is waited for.
const REMOVAL_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Clone)]
pub struct Runtime {
    pub docker: Docker,
}

/// A container of the project as the engine reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ContainerInfo {
    pub name: String,
    pub service: String,
    pub replica: u32,
    pub state: String,
    pub status: String,
    pub spec: String,
    pub image: String,
    /// Host ports it publishes.
    pub host_ports: Vec<u16>,
}

impl ContainerInfo {
    pub fn running(&self) -> bool {
        self.state == "running"
    }
}

/// What a command run in a container printed, and how it ended.
#[derive(Debug, Default)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    pub code: i64,
}

impl Runtime {
    /// Connects and pings, so "Docker is not there" is reported once, clearly, up front.
    pub async fn connect() -> Result<Self> {
        let where_ =
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        let hint = "start the engine (e.g. `dockerd &`, or `systemctl start docker`) or point DOCKER_HOST at it";
        let docker = Docker::connect_with_local_defaults()
            .with_context(|| format!("Docker engine not reachable at {where_}: {hint}"))?;
        tokio::time::timeout(std::time::Duration::from_secs(10), docker.ping())
            .await
            .map_err(|_| anyhow!("Docker engine at {where_} did not answer within 10 s: {hint}"))?
            .with_context(|| format!("Docker engine not reachable at {where_}: {hint}"))?;
        Ok(Self { docker })
    }

    fn project_filter(project: &str) -> HashMap<String, Vec<String>> {
        HashMap::from([("label".to_string(), vec![format!("{LABEL_PROJECT}={project}")])])
    }

    pub async fn list_containers(&self, project: &str) -> Result<Vec<ContainerInfo>> {
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Self::project_filter(project),
                ..Default::default()
            }))
            .await
            .context("listing containers")?;
        Ok(list.into_iter().filter_map(container_info).collect())
    }

    pub async fn ensure_network(&self, stack: &Stack) -> Result<()> {
        let existing = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: HashMap::from([("name", vec![stack.network.as_str()])]),
            }))
            .await
            .context("listing networks")?;
        if existing.iter().any(|n| n.name.as_deref() == Some(&stack.network)) {
            return Ok(());
        }
        self.docker
            .create_network(CreateNetworkOptions {
                name: stack.network.as_str(),
                driver: "bridge",
                check_duplicate: true,
                labels: HashMap::from([(LABEL_PROJECT, stack.project.as_str())]),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating network {}", stack.network))?;
        Ok(())
    }

    pub async fn ensure_volumes(&self, stack: &Stack) -> Result<()> {
        for v in stack.volumes() {
            let name = stack.volume_name(v);
            self.docker
                .create_volume(CreateVolumeOptions {
                    name: name.as_str(),
                    labels: HashMap::from([(LABEL_PROJECT, stack.project.as_str())]),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("creating volume {name}"))?;
        }
        Ok(())
    }

    pub async fn project_volumes(&self, project: &str) -> Result<Vec<String>> {
        let v = self
            .docker
            .list_volumes(Some(ListVolumesOptions { filters: Self::project_filter(project) }))
            .await
            .context("listing volumes")?;
        Ok(v.volumes.unwrap_or_default().into_iter().map(|v| v.name).collect())
    }

    pub async fn project_networks(&self, project: &str) -> Result<Vec<String>> {
        let n = self
            .docker
            .list_networks(Some(ListNetworksOptions { filters: Self::project_filter(project) }))
            .await
            .context("listing networks")?;
        Ok(n.into_iter().filter_map(|n| n.name).collect())
    }

    /// Creates (if needed) and starts one replica. Returns what it did, for the progress line.
    pub async fn ensure_container(
        &self,
        stack: &Stack,
        svc: &Service,
        replica: u32,
        image: &str,
        secrets: &dyn Fn(Secret) -> String,
        existing: Option<&ContainerInfo>,
    ) -> Result<Action> {
        let name = stack.container_name(svc.name, replica);
        // The image's id, not just its tag: a rebuilt image under the same tag means recreate.
        let image_id =
            self.docker.inspect_image(image).await.ok().and_then(|i| i.id).unwrap_or_default();
        let spec = spec_hash(stack, svc, &format!("{image}@{image_id}"));
        if let Some(c) = existing {
            if c.spec == spec {
                if c.running() {
                    return Ok(Action::Kept);
                }
                self.start(&name).await?;
                return Ok(Action::Started);
            }
            // The definition changed (new image, ports, env): replace the container, keep volumes.
            self.remove_container(&name, 10).await?;
        }
        self.create(stack, svc, replica, image, &spec).await?;
        for s in &svc.secrets {
            self.upload_file(&name, &s.path, (secrets)(s.secret).as_bytes(), 0o444).await?;
        }
        self.start(&name).await?;
        Ok(if existing.is_some() { Action::Recreated } else { Action::Created })
    }

    async fn create(
        &self,
        stack: &Stack,
        svc: &Service,
        replica: u32,
        image: &str,
        spec: &str,
    ) -> Result<()> {
        let name = stack.container_name(svc.name, replica);
        let mut exposed = HashMap::new();
        let mut bindings = HashMap::new();
        for p in &svc.ports {
            let key = format!("{}/tcp", p.container);
            exposed.insert(key.clone(), HashMap::new());
            bindings.insert(
                key,
                Some(vec![PortBinding {
                    host_ip: Some(stack.port_bind(p).to_string()),
                    host_port: Some(p.host.to_string()),
                }]),
            );
        }
        let mounts = svc
            .mounts
            .iter()
            .map(|m| DockerMount {
                target: Some(m.path.to_string()),
                source: Some(stack.volume_name(m.volume)),
                typ: Some(MountTypeEnum::VOLUME),
                ..Default::default()
            })
            .collect();
        let labels = HashMap::from([
            (LABEL_PROJECT.to_string(), stack.project.clone()),
            (LABEL_SERVICE.to_string(), svc.name.to_string()),
            (LABEL_REPLICA.to_string(), replica.to_string()),
            (LABEL_SPEC.to_string(), spec.to_string()),
        ]);
        let aliases = std::iter::once(svc.name.as_str())
            .chain(svc.aliases.iter().copied())
            .map(str::to_string)
            .collect();
        let endpoint = EndpointSettings { aliases: Some(aliases), ..Default::default() };
        // The host's network has no aliases, and Docker refuses a hostname with it.
        let (network_mode, networking_config, hostname) = if svc.host_network {
            ("host".to_string(), None, None)
        } else {
            (
                stack.network.clone(),
                Some(bollard::container::NetworkingConfig {
                    endpoints_config: HashMap::from([(stack.network.clone(), endpoint)]),
                }),
                Some(name.clone()),
            )
        };
        let config = ContainerConfig {
            image: Some(image.to_string()),
            hostname,
            cmd: if svc.command.is_empty() { None } else { Some(svc.command.clone()) },
            env: Some(svc.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            exposed_ports: Some(exposed),
            stop_signal: svc.stop_signal.map(str::to_string),
            stop_timeout: Some(svc.stop_timeout as i64),
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                mounts: Some(mounts),
                network_mode: Some(network_mode),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                init: Some(true),
                ..Default::default()
            }),
            networking_config,
            ..Default::default()
        };
        self.docker
            .create_container(
                Some(CreateContainerOptions { name: name.as_str(), platform: None }),
                config,
            )
            .await
            .with_context(|| format!("creating container {name}"))?;
        Ok(())
    }

    pub async fn start(&self, name: &str) -> Result<()> {
        self.docker.start_container(name, None::<StartContainerOptions<String>>).await.map_err(|e| {
            let text = e.to_string();
            if text.contains("address already in use") || text.contains("port is already allocated") {
                anyhow!("cannot start {name}: a host port it publishes is taken ({text}); free it or change it in labctl.toml [ports]")
            } else {
                anyhow!(e).context(format!("starting container {name}"))
            }
        })
    }

    /// Places one file into a (created, maybe not started) container through the archive API.
    pub async fn upload_file(
        &self,
        container: &str,
        path: &str,
        content: &[u8],
        mode: u32,
    ) -> Result<()> {
        self.upload_file_owned(container, path, content, mode, 0).await
    }

    /// Same, owned by `uid` (and the group of the same number) inside the container.
    ///
    /// The archive is unpacked at the deepest folder that already exists, and holds only the
    /// folders missing below it: a folder entry for an existing one (say `/tmp`) would reset
    /// its owner and mode.
    pub async fn upload_file_owned(
        &self,
        container: &str,
        path: &str,
        content: &[u8],
        mode: u32,
        uid: u64,
    ) -> Result<()> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (dirs, file) = parts.split_at(parts.len() - 1);
        let mut last_err = None;
        for existing in (0..=dirs.len()).rev() {
            let base = format!("/{}", dirs[..existing].join("/"));
            let mut builder = tar::Builder::new(Vec::new());
            let mut rel = String::new();
            for d in &dirs[existing..] {
                rel.push_str(d);
                rel.push('/');
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_cksum();
                builder.append_data(&mut h, &rel, std::io::empty())?;
            }
            let mut h = tar::Header::new_gnu();
            h.set_mode(mode);
            h.set_uid(uid);
            h.set_gid(uid);
            h.set_size(content.len() as u64);
            h.set_cksum();
            builder.append_data(&mut h, format!("{rel}{}", file[0]), content)?;
            let bytes = builder.into_inner()?;
            match self
                .docker
                .upload_to_container(
                    container,
                    Some(UploadToContainerOptions { path: base.as_str(), ..Default::default() }),
                    bytes.into(),
                )
                .await
            {
                Ok(()) => return Ok(()),
                // The folder is missing: try one level up, creating it in the archive.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    message,
                }) => last_err = Some(message),
                Err(e) => {
                    return Err(e).with_context(|| format!("copying {path} into {container}"))
                }
            }
        }
        Err(anyhow!("copying {path} into {container}: {}", last_err.unwrap_or_default()))
    }

    /// The host port bound to each container port (TCP) as the container was created, whether it
    /// runs or not: (container port, host port).
    pub async fn published_ports(&self, name: &str) -> Result<Vec<(u16, u16)>> {
        let c = self
            .docker
            .inspect_container(name, None)
            .await
            .with_context(|| format!("inspecting {name}"))?;
        let bindings = c.host_config.and_then(|h| h.port_bindings).unwrap_or_default();
        Ok(bindings
            .into_iter()
            .filter_map(|(port, hosts)| {
                let container = port.strip_suffix("/tcp")?.parse().ok()?;
                let host = hosts?.into_iter().find_map(|b| b.host_port?.parse().ok())?;
                Some((container, host))
            })
            .collect())
    }

    /// How often the engine restarted the container under its restart policy.
    pub async fn restart_count(&self, name: &str) -> Result<i64> {
        let c = self
            .docker
            .inspect_container(name, None)
            .await
            .with_context(|| format!("inspecting {name}"))?;
        Ok(c.restart_count.unwrap_or(0))
    }

    pub async fn stop(&self, name: &str, timeout: i64) -> Result<()> {
        self.docker
            .stop_container(name, Some(StopContainerOptions { t: timeout }))
            .await
            .with_context(|| format!("stopping {name}"))
    }

    /// Removes a container (gone already counts as removed).
    pub async fn remove_container(&self, name: &str, stop_timeout: i64) -> Result<()> {
        // A graceful stop first: the databases inside flush on SIGTERM/SIGINT.
        let _ =
            self.docker.stop_container(name, Some(StopContainerOptions { t: stop_timeout })).await;
        // A removal the engine is still carrying out (asked for by a labctl killed meanwhile)
        // answers 409 until it is done: wait for it instead of failing.
        let deadline = std::time::Instant::now() + REMOVAL_WAIT;
        loop {
            let removed = self
                .docker
                .remove_container(
                    name,
                    Some(RemoveContainerOptions { force: true, v: false, link: false }),
                )
                .await;
            match removed {
                Ok(()) => return Ok(()),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok(()),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 409,
                    message,
                }) if message.contains("already in progress")
                    && std::time::Instant::now() < deadline =>
                {
                    tracing::debug!("{name}: {message}; waiting for the engine");
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("removing container {name}")),
            }
        }
    }

    pub async fn remove_network(&self, name: &str) -> Result<()> {
        self.docker.remove_network(name).await.with_context(|| format!("removing network {name}"))
    }

    pub async fn remove_volume(&self, name: &str) -> Result<()> {
        self.docker
            .remove_volume(name, None)
            .await
            .with_context(|| format!("removing volume {name}"))
    }

    /// Runs a one-off container to its end and returns its last 200 log lines; the container
    /// is removed afterwards (and beforehand, should an earlier run have left it).
    pub async fn run_to_end(&self, c: &OneOff<'_>) -> Result<String> {
        let remove = || async {
            let _ = self
                .docker
                .remove_container(
                    &c.name,
                    Some(RemoveContainerOptions { force: true, ..Default::default() }),
                )
                .await;
        };
        remove().await;
        let config = ContainerConfig {
            image: Some(c.image.to_string()),
            entrypoint: c.entrypoint.clone(),
            cmd: Some(c.cmd.clone()),
            labels: Some(HashMap::from([(LABEL_PROJECT.to_string(), c.project.to_string())])),
            host_config: Some(HostConfig {
                network_mode: Some(c.network.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.docker
            .create_container(
                Some(CreateContainerOptions { name: c.name.as_str(), platform: None }),
                config,
            )
            .await
            .with_context(|| format!("creating {}", c.name))?;
        for (path, content) in c.files {
            self.upload_file(&c.name, path, content, 0o644).await?;
        }
        self.start(&c.name).await?;
        let mut wait = self.docker.wait_container(&c.name, None::<WaitContainerOptions<String>>);
        while let Some(r) = wait.next().await {
            if let Err(e) = r {
                tracing::debug!("wait {}: {e}", c.name);
            }
        }
        let logs = self.tail_logs(&c.name, 200).await;
        remove().await;
        logs
    }

    /// Runs a command in a container and returns its standard output.
    pub async fn exec_output(&self, container: &str, cmd: &[&str]) -> Result<String> {
        Ok(self.exec_capture(container, cmd).await?.stdout)
    }

    /// Runs a command in a container to its end: its standard output, standard error and exit
    /// code.
    pub async fn exec_capture(&self, container: &str, cmd: &[&str]) -> Result<ExecOutput> {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        use futures_util::StreamExt;
        let what = || format!("running {} in {container}", cmd.first().unwrap_or(&""));
        let exec = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(cmd.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .with_context(what)?;
        let mut out = ExecOutput::default();
        if let StartExecResults::Attached { mut output, .. } =
            self.docker.start_exec(&exec.id, None).await.with_context(what)?
        {
            while let Some(chunk) = output.next().await {
                match chunk.with_context(what)? {
                    bollard::container::LogOutput::StdOut { message } => {
                        out.stdout.push_str(&String::from_utf8_lossy(&message))
                    }
                    bollard::container::LogOutput::StdErr { message } => {
                        out.stderr.push_str(&String::from_utf8_lossy(&message))
                    }
                    _ => {}
                }
            }
        }
        let inspect = self.docker.inspect_exec(&exec.id).await.with_context(what)?;
        out.code = inspect.exit_code.unwrap_or(-1);
        Ok(out)
    }

    /// The last `tail` lines a container wrote, stdout and stderr interleaved.
    pub async fn tail_logs(&self, name: &str, tail: usize) -> Result<String> {
        let mut stream = self.docker.logs(
            name,
            Some(LogsOptions::<String> {
                stdout: true,
                stderr: true,
                tail: tail.to_string(),
                ..Default::default()
            }),
        );
        let mut out = String::new();
        while let Some(chunk) = stream.next().await {
            out.push_str(&log_text(chunk.with_context(|| format!("reading logs of {name}"))?));
        }
        Ok(out)
    }

    /// Streams logs to stdout, with a prefix per container when several are shown.
    pub async fn stream_logs(
        &self,
        name: &str,
        prefix: Option<&str>,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<()> {
        use std::io::Write;
        let mut stream = self.docker.logs(
            name,
            Some(LogsOptions::<String> {
                stdout: true,
                stderr: true,
                follow,
                tail: tail.map(|t| t.to_string()).unwrap_or_else(|| "all".into()),
                ..Default::default()
            }),
        );
        let mut pending = String::new();
        while let Some(chunk) = stream.next().await {
            pending.push_str(&log_text(chunk.with_context(|| format!("reading logs of {name}"))?));
            let mut stdout = std::io::stdout().lock();
            while let Some(i) = pending.find('\n') {
                let line: String = pending.drain(..=i).collect();
                match prefix {
                    Some(p) => write!(stdout, "{p} | {line}")?,
                    None => write!(stdout, "{line}")?,
                }
            }
            stdout.flush()?;
        }
        if !pending.is_empty() {
            println!("{}{pending}", prefix.map(|p| format!("{p} | ")).unwrap_or_default());
        }
        Ok(())
    }

    /// Reads one file out of a container (e.g. a Spark driver's stderr) through the archive API.
    /// One file of an image, read from a container created for it and never started.
    pub async fn file_from_image(&self, image: &str, path: &str) -> Result<Vec<u8>> {
        let name = format!(
            "labctl-extract-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        );
        let config =
            bollard::container::Config { image: Some(image.to_string()), ..Default::default() };
        self.docker
            .create_container(
                Some(bollard::container::CreateContainerOptions {
                    name: name.as_str(),
                    platform: None,
                }),
                config,
            )
            .await
            .with_context(|| format!("creating a container of {image} to read {path}"))?;
        let bytes = self.read_file(&name, path).await;
        let removed = self
            .docker
            .remove_container(
                &name,
                Some(bollard::container::RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
        if let Err(e) = removed {
            tracing::warn!("could not remove {name}: {e}");
        }
        bytes
    }

    pub async fn read_file(&self, container: &str, path: &str) -> Result<Vec<u8>> {
        let mut stream = self.docker.download_from_container(
            container,
            Some(bollard::container::DownloadFromContainerOptions { path }),
        );
        let mut tarball = Vec::new();
        while let Some(chunk) = stream.next().await {
            tarball.extend_from_slice(
                &chunk.with_context(|| format!("reading {path} from {container}"))?,
            );
        }
        let mut archive = tar::Archive::new(&tarball[..]);
        for entry in archive.entries()? {
            let mut entry = entry?;
            if entry.header().entry_type().is_file() {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut buf)?;
                return Ok(buf);
            }
        }
        Err(anyhow!("{path} in {container} is not a file"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Kept,
    Started,
    Created,
    Recreated,
}

impl Action {
    pub fn verb(self) -> &'static str {
        match self {
            Action::Kept => "already running",
            Action::Started => "started",
            Action::Created => "created",
            Action::Recreated => "recreated (definition changed)",
        }
    }
}

fn log_text(out: LogOutput) -> String {
    String::from_utf8_lossy(&out.into_bytes()).into_owned()
}

fn container_info(c: ContainerSummary) -> Option<ContainerInfo> {
    let labels = c.labels.unwrap_or_default();
    Some(ContainerInfo {
        name: c.names?.first()?.trim_start_matches('/').to_string(),
        service: labels.get(LABEL_SERVICE)?.clone(),
        replica: labels.get(LABEL_REPLICA).and_then(|r| r.parse().ok()).unwrap_or(1),
        spec: labels.get(LABEL_SPEC).cloned().unwrap_or_default(),
        state: c.state.unwrap_or_default(),
        status: c.status.unwrap_or_default(),
        image: c.image.unwrap_or_default(),
        host_ports: c.ports.unwrap_or_default().iter().filter_map(|p| p.public_port).collect(),
    })
}

/// Hash of a container's definition. Secrets are not part of it: they are files copied in.
fn spec_hash(stack: &Stack, svc: &Service, image: &str) -> String {
    let mut h = Sha256::new();
    h.update(image.as_bytes());
    h.update(stack.network.as_bytes());
    h.update(stack.bind_address.as_bytes());
    h.update(
        serde_json::to_vec(&(
            &svc.command,
            &svc.env,
            &svc.ports,
            &svc.mounts,
            &svc.secrets,
            svc.stop_signal,
        ))
        .unwrap_or_default(),
    );
    // Only when set, so the hash of every other container stays what it was (no recreate).
    if svc.host_network {
        h.update(b"network_mode=host");
    }
    if !svc.aliases.is_empty() {
        h.update(format!("aliases={}", svc.aliases.join(",")).as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}
