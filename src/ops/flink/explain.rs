//! `labctl render flink --explain`: what Flink's planner makes of the lab's job, from the
//! planner itself. The SQL runner plans the script in the lab's JobManager container (its
//! classpath, its Flink) and prints the statement set's plan instead of submitting it; the
//! password stays a placeholder, as planning opens no connection.

use anyhow::{bail, Result};
use base64::{engine::general_purpose::STANDARD as B64, Engine};

use crate::{
    clients::docker::Runtime,
    model::{config::Config, topology::Part},
    stack::{self, state::State, Stack},
};

/// Runs the runner's planning in the JobManager with the same JVM options Flink runs with.
const PLAN_IN_JOBMANAGER: &str = r#"exec java $(sed -n 's/^env.java.opts.all: //p' "$FLINK_CONF_DIR/config.yaml") -Xmx512m -XX:+UseSerialGC -cp "$FLINK_HOME/lib/*:$FLINK_HOME/usrlib/labctl-sql-runner.jar" lab.SqlRunner --explain "$@""#;

/// The plan of the lab's job: the abstract syntax tree, the optimized physical plan and the
/// optimized execution plan, as Flink's EXPLAIN prints them.
pub async fn explain(config: &Config) -> Result<String> {
    if Part::Flink.is_external(config) {
        bail!("--explain plans the job in the lab's own JobManager, and flink.url names an external cluster; run EXPLAIN there (the script is `labctl render flink`)");
    }
    let state = State::require(config)?;
    let stack = Stack::new(config, &state);
    let script = super::render(config, None)?;
    let args: Vec<String> =
        super::job::split_statements(&script).iter().map(|s| B64.encode(s)).collect();
    let mut cmd = vec!["bash", "-c", PLAN_IN_JOBMANAGER, "explain"];
    cmd.extend(args.iter().map(String::as_str));
    let container = stack.container_name(stack::FLINK_JM, 1);
    let out = Runtime::connect().await?.exec_capture(&container, &cmd).await?;
    match out.stdout.find("== Abstract Syntax Tree ==") {
        Some(i) if out.code == 0 => Ok(out.stdout[i..].to_string()),
        _ => {
            let why = out
                .stderr
                .lines()
                .chain(out.stdout.lines())
                .find(|l| l.contains("labctl-sql-runner:"))
                .unwrap_or("no plan printed")
                .to_string();
            bail!("Flink's planner did not plan the job in {container} (exit {}): {why}; is the lab up (`labctl up`)?", out.code)
        }
    }
}
