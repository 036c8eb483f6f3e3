//! The SQL-runner jar the lab's jobs run through: found on the lab's own cluster (its image
//! ships it), uploaded to an external one under a name versioned by the image's inputs; and
//! what to tell a user whose cluster lacks a connector the job needs.

use anyhow::{bail, Context, Result};

use super::job::RUNNER_JAR_NAME;
use crate::{
    clients::{
        docker::{images::input_hash, Runtime},
        flink::{self, RequestError},
    },
    model::topology::Part,
    ops::lab::Lab,
    progress::Progress,
    stack::FLINK_IMAGE,
};

/// A refusal in the words a user acts on (a missing connector named as such); any other
/// failure as it is.
pub(super) fn explain_submit_error(e: RequestError, verbose: bool) -> anyhow::Error {
    let se = match e {
        RequestError::Refused(se) => se,
        other => return other.into(),
    };
    if let Some(hint) = missing_connector(&format!("{}\n{}", se.cause, se.full)) {
        anyhow::anyhow!("Flink refused the job: {hint}")
    } else if verbose {
        anyhow::anyhow!("Flink refused the job: {}\n--- full error ---\n{}", se.cause, se.full)
    } else {
        anyhow::anyhow!("Flink refused the job: {}\n(full text: --verbose)", se.cause)
    }
}

pub async fn find_or_explain_runner(client: &flink::Client) -> Result<String> {
    let jars = client.jars().await?;
    match jars.iter().find(|j| j.name == RUNNER_JAR_NAME) {
        Some(j) => Ok(j.id.clone()),
        None => bail!(
            "the Flink cluster has no {RUNNER_JAR_NAME}; the lab's Flink image provides it: recreate the JobManager with `labctl up`"
        ),
    }
}

/// The SQL runner's jar id on the cluster. The lab's own JobManager lists it from the start;
/// an external cluster gets it uploaded, taken from the lab's Flink image (built if missing),
/// so the runner always matches the job labctl renders.
pub(super) async fn ensure_runner(
    lab: &Lab,
    client: &flink::Client,
    progress: &dyn Progress,
) -> Result<String> {
    if !Part::Flink.is_external(&lab.config) {
        return find_or_explain_runner(client).await;
    }
    let name = external_runner_name();
    if let Some(j) = client.jars().await?.into_iter().find(|j| j.name == name) {
        return Ok(j.id);
    }
    let rt = Runtime::connect()
        .await
        .context("the SQL runner jar comes from the lab's Flink image, which needs Docker here")?;
    let (image, _) = rt.ensure_image(&FLINK_IMAGE, false, progress).await?;
    let bytes = rt.file_from_image(&image, RUNNER_JAR_PATH).await?;
    progress.note(&format!(
        "uploading {name} ({} KiB, from {image}) to {}",
        bytes.len() / 1024,
        client.base()
    ));
    client.upload_jar(&name, bytes).await.context("uploading the SQL runner jar")
}

/// The runner's name on a cluster labctl does not run, versioned by the Flink image's input
/// hash (which covers the runner's sources): a cluster that holds an older runner, e.g. one
/// without a UDF the job now calls, gets this one instead of running the job with the old.
fn external_runner_name() -> String {
    format!("labctl-sql-runner-{}.jar", input_hash(&FLINK_IMAGE))
}

/// Connector jars the lab's job needs on a cluster: (what, file name prefixes that provide it).
const CONNECTORS: &[(&str, &[&str])] = &[
    ("the Kafka connector", &["flink-connector-kafka", "flink-sql-connector-kafka"]),
    ("the Kafka client", &["kafka-clients", "flink-sql-connector-kafka"]),
    ("the JDBC connector", &["flink-connector-jdbc"]),
    ("the PostgreSQL JDBC driver", &["postgresql-", "flink-connector-jdbc-postgres"]),
];

/// What of `CONNECTORS` a class path lacks, judged by jar file names.
fn missing_jars(classpath: &[String]) -> Vec<&'static str> {
    let names: Vec<&str> = classpath.iter().map(|p| p.rsplit('/').next().unwrap_or(p)).collect();
    CONNECTORS
        .iter()
        .filter(|(_, prefixes)| !names.iter().any(|n| prefixes.iter().any(|p| n.starts_with(p))))
        .map(|(what, _)| *what)
        .collect()
}

/// Warns before submitting to an external cluster whose JobManager shows no jar for a
/// connector the job needs. Only a warning: a jar of another name may still provide it, and the
/// planner's answer (see `missing_connector`) is the final word.
pub(super) async fn warn_about_connectors(client: &flink::Client, progress: &dyn Progress) {
    match client.jobmanager_classpath().await {
        Ok(cp) => {
            let missing = missing_jars(&cp);
            if !missing.is_empty() {
                progress.note(&format!(
                    "warning: the Flink cluster's class path shows no jar for {}; the job needs them in the lib/ of its JobManager and TaskManagers (Flink 2.x builds of flink-connector-kafka, kafka-clients, flink-connector-jdbc-core, flink-connector-jdbc-postgres and the PostgreSQL driver)",
                    missing.join(", ")
                ));
            }
        }
        Err(e) => tracing::debug!("no class path from the JobManager: {e:#}"),
    }
}

/// The SQL runner in the lab's Flink image.
const RUNNER_JAR_PATH: &str = "/opt/flink/usrlib/labctl-sql-runner.jar";

/// A job that fails because the cluster lacks a connector fails while planning, with this text.
fn missing_connector(cause: &str) -> Option<&'static str> {
    if !cause.contains("Could not find any factory for identifier") {
        return None;
    }
    Some(if cause.contains("'kafka'") {
        "the Flink cluster has no Kafka connector: put flink-connector-kafka and kafka-clients jars (for its Flink 2.x version) into its lib/ and restart it"
    } else if cause.contains("'jdbc'") {
        "the Flink cluster has no JDBC connector: put flink-connector-jdbc-core, flink-connector-jdbc-postgres and the PostgreSQL driver jars into its lib/ and restart it"
    } else {
        "the Flink cluster lacks a connector the job uses; add its jar to the cluster's lib/"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connector_jars_by_name() {
        let lab_image: Vec<String> = [
            "flink-dist-2.2.1.jar",
            "flink-connector-jdbc-core-4.0.0-2.0.jar",
            "flink-connector-jdbc-postgres-4.0.0-2.0.jar",
            "flink-connector-kafka-5.0.0-2.2.jar",
            "kafka-clients-4.2.0.jar",
            "postgresql-42.7.14.jar",
        ]
        .iter()
        .map(|j| format!("/opt/flink/lib/{j}"))
        .collect();
        assert!(missing_jars(&lab_image).is_empty());
        assert_eq!(
            missing_jars(&lab_image[..1]),
            [
                "the Kafka connector",
                "the Kafka client",
                "the JDBC connector",
                "the PostgreSQL JDBC driver"
            ]
        );
        let fat = vec!["/x/flink-sql-connector-kafka-5.0.0-2.2.jar".to_string()];
        assert_eq!(missing_jars(&fat), ["the JDBC connector", "the PostgreSQL JDBC driver"]);
    }

    #[test]
    fn a_missing_connector_is_named() {
        let kafka = "org.apache.flink.table.api.ValidationException: Could not find any factory for identifier 'kafka' that implements 'org.apache.flink.table.factories.DynamicTableFactory' in the classpath.";
        assert!(missing_connector(kafka).unwrap().contains("Kafka connector"));
        assert!(missing_connector(&kafka.replace("'kafka'", "'jdbc'"))
            .unwrap()
            .contains("JDBC connector"));
        assert!(missing_connector("Column 'avg_val' not found").is_none());
    }
}
