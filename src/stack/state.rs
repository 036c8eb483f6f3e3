//! What labctl remembers about a lab between commands: the generated database password, the
//! host ports it settled on and the replica counts it was scaled to. One JSON file per
//! project, readable only by its owner.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::PathBuf,
};

use anyhow::{Context, Result};
use rand::{distributions::Alphanumeric, Rng};
use serde::{Deserialize, Serialize};

use crate::{
    model::{
        config::{Config, PortKey, Ports},
        security,
    },
    stack::{host_address, rest_tls, rest_tls::RestTls, Secret},
};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub db_password: String,
    /// Host ports actually used; differs from the config where the config says 0 (auto).
    pub ports: Ports,
    /// Replica counts set by `labctl scale SERVICE N` (or `up --taskmanagers/--spark-workers`),
    /// by service name. They win over the config's `flink.taskmanagers` / `spark.workers`,
    /// which only give the size of a lab that was never scaled; `down --volumes` forgets them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replicas: BTreeMap<String, u32>,
    /// SCRAM password of the user `lab` on the lab broker's SASL_SSL listener
    /// (`broker.sasl_ssl_listener`); generated on the first `up` that needs it, placed into the
    /// broker as a file like the database password.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub broker_password: String,
    /// Passwords of the lab database's writer (the Flink job) and reader (the export) roles;
    /// generated on the first `up` that finds them missing (a lab from before they existed too).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub db_writer_password: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub db_reader_password: String,
    /// The lab's own Flink job was submitted and neither cancelled nor stopped with the lab
    /// (`down`): when it is missing (a JobManager lost its jobs), `up` brings it back from its
    /// newest retained checkpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flink_job: bool,
    /// The certificates of Flink's REST API with `flink.rest_mutual_tls`, labctl's client key
    /// among them; made on the first `up` that needs them, again when the server's names change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flink_rest_tls: Option<RestTls>,
    /// The key (256 bits, base64url) Spark's REST server checks the tokens of requests with
    /// (`spark.rest_tokens`); labctl signs each request's token with it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub spark_rest_key: String,
}

impl State {
    /// The content of a secret file labctl places into a container.
    pub fn secret(&self, s: Secret) -> String {
        match s {
            Secret::DbPassword => self.db_password.clone(),
            Secret::BrokerPassword => self.broker_password.clone(),
            Secret::SparkRestKey => self.spark_rest_key.clone(),
            tls => self
                .flink_rest_tls
                .as_ref()
                .and_then(|t| t.file(tls))
                .unwrap_or_default()
                .to_string(),
        }
    }

    /// Takes a secret back (read from a container, when the state file was lost).
    pub fn set_secret(&mut self, s: Secret, value: String) {
        match s {
            Secret::DbPassword => self.db_password = value,
            Secret::BrokerPassword => self.broker_password = value,
            Secret::SparkRestKey => self.spark_rest_key = value,
            tls => {
                if let Some(slot) =
                    self.flink_rest_tls.get_or_insert_with(Default::default).file_mut(tls)
                {
                    *slot = value;
                }
            }
        }
    }
}

impl State {
    /// Records in the lab's state file whether its Flink job should run (see `flink_job`).
    pub fn remember_flink_job(project: &str, on: bool) -> Result<()> {
        match State::load(project)? {
            Some(mut st) if st.flink_job != on => {
                st.flink_job = on;
                st.save(project)
            }
            _ => Ok(()),
        }
    }
}

/// Folder holding the state files: `$LABCTL_STATE_DIR`, else `$XDG_STATE_HOME/labctl`,
/// else `~/.local/state/labctl`.
pub fn state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LABCTL_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("labctl");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local/state/labctl")
}

/// Offset samples `status` keeps between calls (see `status::rate`).
pub fn samples_path(project: &str) -> PathBuf {
    state_dir().join(format!("{project}.offsets.json"))
}

/// The exports labctl followed to their end, one JSON line each (see `ops::spark::history`).
pub fn exports_path(project: &str) -> PathBuf {
    state_dir().join(format!("{project}.exports.jsonl"))
}

/// Windows `verify --repair` or an export recomputed, one JSON line per run (see
/// `ops::verify::repair`).
pub fn repairs_path(project: &str) -> PathBuf {
    state_dir().join(format!("{project}.repairs.jsonl"))
}

/// Marker of a `labctl submit flink` whose run request may be in flight (see `ops::flink`).
pub fn submit_marker_path(project: &str) -> PathBuf {
    state_dir().join(format!("{project}.flink-submit.json"))
}

/// Held while a command changes a lab (`up`, `scale`, `down`, `submit flink`), so two of them
/// at once take turns instead of racing on its containers, its state file or its Flink job. An
/// flock on `<project>.lock` in the state folder: the kernel drops it when its holder dies,
/// SIGKILL included, so a killed labctl leaves nothing stale behind.
pub struct LabLock {
    _file: fs::File,
}

/// Who holds a lab's lock, as it wrote itself into the lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: Option<u32>,
    pub command: String,
}

impl LabLock {
    /// Takes the lab's lock if it is free; else says who holds it. `command` names what the
    /// holder is doing, for whoever waits (`up`, `submit flink`).
    pub fn try_acquire(project: &str, command: &str) -> Result<Result<LabLock, LockHolder>> {
        Self::try_acquire_in(&state_dir(), project, command)
    }

    fn try_acquire_in(
        dir: &std::path::Path,
        project: &str,
        command: &str,
    ) -> Result<Result<LabLock, LockHolder>> {
        use std::io::{Read, Seek};
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create state folder {}", dir.display()))?;
        let path = dir.join(format!("{project}.lock"));
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open the lab's lock file {}", path.display()))?;
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor this function owns; LOCK_NB never blocks.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err).with_context(|| format!("cannot lock {}", path.display()));
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let (pid, command) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
            return Ok(Err(LockHolder { pid: pid.parse().ok(), command: command.to_string() }));
        }
        file.set_len(0)
            .and_then(|_| file.rewind())
            .with_context(|| format!("cannot write {}", path.display()))?;
        write!(file, "{} {command}", std::process::id())
            .and_then(|_| file.flush())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Ok(LabLock { _file: file }))
    }
}

/// The CA certificate of the lab broker's SASL_SSL listeners, copied out of the broker by `up`
/// (`broker.sasl_ssl_listener`): what a client of that listener names as its CA file.
pub fn broker_ca_path(project: &str) -> PathBuf {
    state_dir().join(format!("{project}.broker-ca.pem"))
}

/// labctl's client certificate with its key, and the lab CA, for Flink's REST API
/// (`flink.rest_mutual_tls`), written by `up` for other clients (curl, Flink's CLI).
pub fn flink_client_paths(project: &str) -> (PathBuf, PathBuf) {
    let d = state_dir();
    (d.join(format!("{project}.flink-client.pem")), d.join(format!("{project}.flink-ca.pem")))
}

pub fn state_path(project: &str) -> PathBuf {
    state_dir().join(format!("{project}.json"))
}

fn new_password() -> String {
    rand::thread_rng().sample_iter(&Alphanumeric).take(32).map(char::from).collect()
}

/// 256 random bits, base64url without padding (as Spark's JWSFilter reads its key).
fn new_key() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::thread_rng().gen();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A port the kernel says is free right now on `bind`, with the listener that holds it: the
/// caller keeps it open until all its picks are made, since a port closed at once is free again
/// for the next pick (nine picks in a row gave one port twice in about 1 lab of 400).
fn free_port(bind: &str) -> Result<(u16, std::net::TcpListener)> {
    let l = std::net::TcpListener::bind((bind, 0))
        .with_context(|| format!("cannot bind {bind} to find a free port"))?;
    let port =
        l.local_addr().with_context(|| format!("cannot read the port bound on {bind}"))?.port();
    Ok((port, l))
}

/// The lab's host ports: the config's fixed ones, else the ones the lab already has
/// (`remembered`), else free ones, all distinct.
fn lab_ports(config: &Config, remembered: Option<&Ports>) -> Result<Ports> {
    let mut ports = Ports::default();
    let mut to_pick = Vec::new();
    for key in PortKey::ALL {
        match (config.ports.get(key), remembered.map(|r| r.get(key))) {
            (0, Some(p)) if p != 0 => ports.set(key, p),
            (0, _) => to_pick.push(key),
            (p, _) => ports.set(key, p),
        }
    }
    let mut used: Vec<u16> =
        PortKey::ALL.iter().filter(|k| !to_pick.contains(k)).map(|k| ports.get(*k)).collect();
    let mut held = Vec::new();
    for key in to_pick {
        let port = loop {
            let (port, listener) = free_port(security::port_bind_address(config, key))?;
            held.push(listener);
            if !used.contains(&port) {
                break port;
            }
        };
        used.push(port);
        ports.set(key, port);
    }
    Ok(ports)
}

impl State {
    /// Reads the project's state, if `up` ever ran for it.
    pub fn load(project: &str) -> Result<Option<State>> {
        let path = state_path(project);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let st = serde_json::from_str(&text).with_context(|| {
                    format!("state file {} is corrupt; fix it or remove it (a new password will be generated)", path.display())
                })?;
                Ok(Some(st))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read state file {}", path.display())),
        }
    }

    /// Loads the state or creates it (password generated, auto ports chosen), then applies
    /// the config's fixed ports. Does not save.
    pub fn load_or_init(config: &Config) -> Result<State> {
        let old = State::load(&config.project)?;
        let mut st = old.clone().unwrap_or_else(|| State {
            db_password: new_password(),
            ports: Ports::default(),
            replicas: BTreeMap::new(),
            broker_password: String::new(),
            db_writer_password: String::new(),
            db_reader_password: String::new(),
            flink_job: false,
            flink_rest_tls: None,
            spark_rest_key: String::new(),
        });
        if config.broker.sasl_ssl_listener && st.broker_password.is_empty() {
            st.broker_password = new_password();
        }
        if config.spark.rest_tokens && st.spark_rest_key.is_empty() {
            st.spark_rest_key = new_key();
        }
        if config.flink.rest_mutual_tls && config.flink.url.is_empty() {
            let host = host_address(security::port_bind_address(config, PortKey::FlinkUi));
            let names = rest_tls::server_names(host);
            if st.flink_rest_tls.as_ref().is_none_or(|t| t.names != names) {
                st.flink_rest_tls = Some(rest_tls::issue(&config.project, names)?);
            }
        }
        for pw in [&mut st.db_writer_password, &mut st.db_reader_password] {
            if pw.is_empty() {
                *pw = new_password();
            }
        }
        st.ports = lab_ports(config, old.as_ref().map(|o| &o.ports))?;
        Ok(st)
    }

    /// The state as it must be for commands other than `up`: a lab that was never started has
    /// none. Its ports are the ones the lab runs with; a changed `[ports]` takes effect at the
    /// next `up`, so until then every command keeps talking to the lab that is actually there
    /// (and never to another lab on the default ports).
    pub fn require(config: &Config) -> Result<State> {
        State::load(&config.project)?.ok_or_else(|| {
            anyhow::anyhow!("lab `{}` has not been started on this machine (no state file); run `labctl up` first", config.project)
        })
    }

    /// Writes the file with mode 0600 (its folder 0700), replacing it atomically.
    pub fn save(&self, project: &str) -> Result<()> {
        let dir = state_dir();
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create state folder {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict permissions of {}", dir.display()))?;
        let path = state_path(project);
        let tmp = path.with_extension("json.tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))?;
        Ok(())
    }

    /// Removes the state file and what is kept beside it (status's offset samples, a submit
    /// marker, the broker's CA certificate).
    pub fn remove(project: &str) -> Result<()> {
        for path in [
            state_path(project),
            samples_path(project),
            submit_marker_path(project),
            broker_ca_path(project),
            flink_client_paths(project).0,
            flink_client_paths(project).1,
        ] {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot remove {}", path.display()))
                }
                _ => {}
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn for_tests(config: &Config) -> State {
        State {
            db_password: new_password(),
            ports: config.ports.clone(),
            replicas: BTreeMap::new(),
            broker_password: new_password(),
            db_writer_password: new_password(),
            db_reader_password: new_password(),
            flink_job: false,
            flink_rest_tls: None,
            spark_rest_key: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_random_and_long() {
        let (a, b) = (new_password(), new_password());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn free_ports_are_distinct_within_a_lab() {
        let mut config = Config::default();
        for key in PortKey::ALL {
            config.ports.set(key, 0);
        }
        // Closing each pick before the next gave a repeat in about 1 lab of 400, so 2000 labs
        // find it almost surely.
        for _ in 0..2000 {
            let ports = lab_ports(&config, None).unwrap();
            let mut all: Vec<u16> = PortKey::ALL.iter().map(|k| ports.get(*k)).collect();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), PortKey::ALL.len(), "{ports:?}");
        }
    }

    #[test]
    fn fixed_and_remembered_ports_are_kept_and_never_picked_again() {
        let mut config = Config::default();
        for key in PortKey::ALL {
            config.ports.set(key, 0);
        }
        config.ports.set(PortKey::Database, 15432);
        let mut remembered = Ports::default();
        remembered.set(PortKey::Broker, 19092);
        remembered.set(PortKey::Database, 25432);
        let ports = lab_ports(&config, Some(&remembered)).unwrap();
        assert_eq!(ports.get(PortKey::Database), 15432, "the config wins");
        assert_eq!(ports.get(PortKey::Broker), 19092, "the lab keeps its port");
        assert_eq!(ports.get(PortKey::Azurite), 10000, "remembered, though 0 in the config");
    }

    #[test]
    fn a_lab_lock_is_held_once_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let lock = |project: &str, command: &str| {
            LabLock::try_acquire_in(dir.path(), project, command).unwrap()
        };
        let first = lock("locked", "up").expect("free at first");
        // A second open of the file is another holder, even in this process.
        let holder = lock("locked", "scale").err().expect("held");
        assert_eq!(holder, LockHolder { pid: Some(std::process::id()), command: "up".into() });
        assert!(lock("another-lab", "up").is_ok(), "per lab");
        drop(first);
        let again = lock("locked", "scale");
        assert!(again.is_ok(), "released on drop");
    }
}
