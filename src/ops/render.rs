//! Files derived from the stack definition: `docker-compose.yml` (a tera template fed with the
//! same `Stack` that `up` turns into containers) and `init-db.sql` (from `schema`).

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use crate::{
    clients::docker::images::image_tag,
    stack::{assets, Secret, Stack},
};

pub const COMPOSE_TEMPLATE: &str = "templates/docker-compose.yml.tera";

/// Renders an embedded template, reporting syntax errors with the template's name and cause.
pub fn render_template(path: &str, context: &tera::Context) -> Result<String> {
    let text = assets::text(path)
        .ok_or_else(|| anyhow!("template {path} is not embedded in this build"))?;
    let mut tera = tera::Tera::default();
    tera.autoescape_on(vec![]);
    tera.add_raw_template(path, text)
        .map_err(|e| anyhow!("template {path}: {}", error_chain(&e)))?;
    tera.render(path, context).map_err(|e| anyhow!("rendering {path}: {}", error_chain(&e)))
}

/// Tera's own errors put the useful part (line, column, expected token) in the source chain.
fn error_chain(e: &tera::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    parts.join(": ")
}

/// YAML double-quoted scalar (JSON's escaping is valid YAML); `$` doubled for compose.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default().replace('$', "$$")
}

#[derive(Serialize)]
struct ComposeService {
    name: String,
    image: String,
    command: Vec<String>,
    env: Vec<(String, String)>,
    ports: Vec<String>,
    volumes: Vec<String>,
    secrets: Vec<String>,
    depends_on: Vec<String>,
    replicas: u32,
    stop_signal: Option<String>,
    stop_grace: u32,
    host_network: bool,
    /// The service name first, then its extra aliases.
    aliases: Vec<String>,
}

#[derive(Serialize)]
struct ComposeSecret {
    name: &'static str,
    variable: String,
    what: &'static str,
}

/// The variable naming a secret's file for compose: `LABCTL_DB_PASSWORD_FILE` and the like.
fn secret_variable(s: Secret) -> String {
    let stem: String = s
        .name()
        .trim_end_matches(".pem")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
        .collect();
    format!("LABCTL_{stem}_FILE")
}

pub fn compose(stack: &Stack) -> Result<String> {
    let services: Vec<ComposeService> = stack
        .services
        .iter()
        .map(|s| ComposeService {
            name: s.name.to_string(),
            image: image_tag(&s.image),
            command: s.command.iter().map(|c| yaml_str(c)).collect(),
            env: s.env.iter().map(|(k, v)| (k.clone(), yaml_str(v))).collect(),
            ports: s
                .ports
                .iter()
                .map(|p| yaml_str(&format!("{}:{}:{}", stack.port_bind(p), p.host, p.container)))
                .collect(),
            volumes: s.mounts.iter().map(|m| format!("{}:{}", m.volume, m.path)).collect(),
            secrets: s.secrets.iter().map(|f| f.secret.name().to_string()).collect(),
            depends_on: s.depends_on.iter().map(|d| d.to_string()).collect(),
            replicas: s.replicas,
            stop_signal: s.stop_signal.map(str::to_string),
            stop_grace: s.stop_timeout,
            host_network: s.host_network,
            aliases: std::iter::once(s.name.as_str())
                .chain(s.aliases.iter().copied())
                .map(str::to_string)
                .collect(),
        })
        .collect();
    let volumes: Vec<(String, String)> =
        stack.volumes().iter().map(|v| (v.to_string(), stack.volume_name(v))).collect();
    let mut ctx = tera::Context::new();
    ctx.insert("project", &stack.project);
    ctx.insert("network", &stack.network);
    ctx.insert("services", &services);
    ctx.insert("volumes", &volumes);
    // Each secret file the services take, as compose reads it from a file of the user's.
    let mut secrets: Vec<ComposeSecret> = Vec::new();
    for f in stack.services.iter().flat_map(|s| &s.secrets) {
        if secrets.iter().all(|s| s.name != f.secret.name()) {
            secrets.push(ComposeSecret {
                name: f.secret.name(),
                variable: secret_variable(f.secret),
                what: f.secret.what(),
            });
        }
    }
    ctx.insert("secrets", &secrets);
    render_template(COMPOSE_TEMPLATE, &ctx).context("rendering docker-compose.yml")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::config::Config, stack::state::State};

    fn default_stack() -> Stack {
        let c = Config::default();
        Stack::new(
            &c,
            &State { db_password: "unused".into(), ports: c.ports.clone(), ..Default::default() },
        )
    }

    /// The committed docker-compose.yml must be what `labctl render compose` gives for the
    /// default configuration; regenerate it with `labctl render compose -o docker-compose.yml`.
    #[test]
    fn committed_compose_file_is_current() {
        let rendered = compose(&default_stack()).unwrap();
        let committed =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
                .unwrap();
        assert!(
            rendered == committed,
            "docker-compose.yml is out of date: run `labctl render compose -o docker-compose.yml`"
        );
    }

    /// Same for init-db.sql, regenerated with `labctl render init-db -o init-db.sql`.
    #[test]
    fn committed_init_db_is_current() {
        let committed =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/init-db.sql")).unwrap();
        assert!(
            crate::model::schema::init_db_sql() == committed,
            "init-db.sql is out of date: run `labctl render init-db -o init-db.sql`"
        );
    }

    #[test]
    fn compose_has_every_service_and_no_secret_value() {
        let text = compose(&default_stack()).unwrap();
        for s in default_stack().services {
            assert!(text.contains(&format!("\n  {}:\n", s.name)), "{}", s.name);
        }
        assert!(!text.contains("unused"));
        for line in text.lines().filter(|l| l.trim_start().starts_with("- \"") && l.contains(':')) {
            assert!(
                line.trim_start().starts_with("- \"127.0.0.1:"),
                "published on all interfaces: {line}"
            );
        }
    }

    #[test]
    fn yaml_strings_escape() {
        assert_eq!(yaml_str("a\nb"), "\"a\\nb\"");
        assert_eq!(yaml_str("$(id)"), "\"$$(id)\"");
    }
}
