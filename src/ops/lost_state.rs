//! A lab whose state file is gone (deleted, another home folder, another `LABCTL_STATE_DIR`)
//! still has its containers, and they hold what the file held: the database's and the broker's
//! passwords as the files labctl copied into them, the host ports they publish, and how many
//! replicas of each scalable service run. `up` rebuilds the state from them. Without that it
//! would generate a password the running database refuses, or pick new ports and recreate every
//! container (the JobManager with them, and the Flink job with it).

use anyhow::{Context, Result};

use crate::{
    clients::docker::{ContainerInfo, Runtime},
    model::config::Config,
    stack::{self, state::State, Stack},
};

/// The state rebuilt from the lab's containers, and what was taken from where.
pub struct Recovered {
    pub state: State,
    pub found: Vec<String>,
}

/// Rebuilds the state of `config`'s lab from its `existing` containers. What no container
/// holds is made as for a new lab: the job roles' passwords (`up` sets them in the database)
/// and the ports of services that have no container.
pub async fn from_containers(
    rt: &Runtime,
    config: &Config,
    existing: &[ContainerInfo],
) -> Result<Recovered> {
    let mut state = State::load_or_init(config)?;
    let stack = Stack::new(config, &state);
    let mut found = Vec::new();
    for svc in &stack.services {
        // Only replica 1 publishes ports or holds a secret file.
        let name = stack.container_name(svc.name, 1);
        if !existing.iter().any(|c| c.name == name) {
            continue;
        }
        // A port the config fixes is the config's; only those labctl picked are remembered.
        let picked: Vec<_> = svc.ports.iter().filter(|p| config.ports.get(p.key) == 0).collect();
        if !picked.is_empty() {
            let published = rt.published_ports(&name).await?;
            for p in picked {
                if let Some(&(_, host)) = published.iter().find(|(c, _)| *c == p.container) {
                    state.ports.set(p.key, host);
                    found.push(format!("ports.{} = {host}", p.key.as_str()));
                }
            }
        }
        for s in &svc.secrets {
            let bytes = rt.read_file(&name, &s.path).await.with_context(|| {
                format!("the state file of lab `{}` is missing and its password cannot be read back from container {name}; put the state file back, or `labctl down` (data volumes are kept) and `labctl up`: a new container takes the new password", config.project)
            })?;
            let value = String::from_utf8(bytes)
                .with_context(|| format!("{} in {name} is not text", s.path))?;
            state.set_secret(s.secret, value);
            found.push(format!("{} from {name}", s.secret.what()));
        }
    }
    for service in stack::SCALABLE {
        let n = existing.iter().filter(|c| c.service == service.as_str()).count() as u32;
        if n > 0 && n != stack::initial_replicas(config, *service) {
            state.replicas.insert(service.to_string(), n);
            found.push(format!("{service}: {n} replica(s)"));
        }
    }
    Ok(Recovered { state, found })
}
