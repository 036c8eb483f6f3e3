//! A lab published beyond loopback: `bind_address` is this host's own non-loopback address,
//! with the three settings such an address requires (`flink.rest_mutual_tls`,
//! `spark.rest_tokens`, `broker.sasl_ssl_listener`). Each door is tried from outside labctl,
//! with plain HTTP clients and TCP connects at that address: only who authenticates gets in,
//! what cannot authenticate is not there at all, and labctl itself runs the lab through them.

mod common;

use std::{net::TcpStream, process::Command, time::Duration};

use common::{docker, rt, TestLab};
use labctl::{clients::spark::token, model::config::PortKey, stack::rest_tls};

/// This host's first IPv4 address beyond loopback (`hostname -I`).
fn host_ip() -> String {
    let out = Command::new("hostname").arg("-I").output().expect("running hostname -I");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| !ip.is_loopback()))
        .expect("this host has no IPv4 address beyond loopback")
        .to_string()
}

fn reachable(ip: &str, port: u16) -> bool {
    let addr = format!("{ip}:{port}").parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

fn http(tls: Option<(&str, Option<String>)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some((ca, identity)) = tls {
        b = b
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap());
        if let Some(id) = identity {
            b = b.identity(reqwest::Identity::from_pem(id.as_bytes()).unwrap());
        }
    }
    b.build().unwrap()
}

#[test]
fn a_lab_beyond_loopback_lets_in_only_who_authenticates() {
    let ip = host_ip();
    let t = TestLab::new("exposed")
        .with_env("LABCTL_INGEST_ENABLED", "false")
        .with_env("LABCTL_BIND_ADDRESS", &ip)
        .with_env("LABCTL_FLINK_REST_MUTUAL_TLS", "true")
        .with_env("LABCTL_SPARK_REST_TOKENS", "true")
        .with_env("LABCTL_BROKER_SASL_SSL_LISTENER", "true");
    // `up` waits on every probe, Flink's and Spark's through their authentication.
    let up = t.json(&["up", "--json"]);
    let lab = t.lab();
    let port = |k: PortKey| lab.state.ports.get(k);

    // What authenticates faces the address; the rest is only on loopback.
    for k in [PortKey::Database, PortKey::FlinkUi, PortKey::SparkRest, PortKey::BrokerSaslSsl] {
        assert!(reachable(&ip, port(k)), "{k} is not published on {ip}");
    }
    for k in [PortKey::Broker, PortKey::SparkUi, PortKey::Azurite] {
        assert!(!reachable(&ip, port(k)), "{k} answers on {ip} without authentication");
        assert!(reachable("127.0.0.1", port(k)), "{k} is not on loopback either");
    }

    // Flink: TLS, and no answer without a client certificate of the lab's CA.
    let tls = lab.state.flink_rest_tls.clone().expect("no REST certificates in the state");
    let flink = format!("https://{ip}:{}/overview", port(PortKey::FlinkUi));
    let rt = rt();
    let get = |client: reqwest::Client, url: String| {
        rt.block_on(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
    };
    // The files `up` leaves for other clients are that certificate and CA.
    let read =
        |key: &str| std::fs::read_to_string(up["flink_client"][key].as_str().unwrap()).unwrap();
    let (identity_file, ca_file) = (read("certificate"), read("ca_file"));
    assert_eq!(
        (identity_file.as_str(), ca_file.as_str()),
        (tls.client_identity().as_str(), tls.ca.as_str())
    );
    assert_eq!(
        get(http(Some((&ca_file, Some(identity_file)))), flink.clone()).ok(),
        Some(200),
        "labctl's certificate is refused"
    );
    assert!(get(http(Some((&tls.ca, None))), flink.clone()).is_err(), "in without a certificate");
    let stranger = rest_tls::issue("stranger", rest_tls::server_names(&ip)).unwrap();
    assert!(
        get(http(Some((&tls.ca, Some(stranger.client_identity())))), flink.clone()).is_err(),
        "in with a certificate of another CA"
    );
    assert!(
        get(http(None), flink.replace("https:", "http:")).map_or(true, |s| s != 200),
        "Flink answers plain HTTP"
    );

    // Spark: the REST server turns away requests without a token of the lab's key.
    let status =
        format!("http://{ip}:{}/v1/submissions/status/driver-none", port(PortKey::SparkRest));
    let with_token = |bearer: Option<String>| {
        let (client, url) = (http(None), status.clone());
        rt.block_on(async move {
            let mut req = client.get(url);
            if let Some(b) = bearer {
                req = req.bearer_auth(b);
            }
            req.send().await.map(|r| r.status().as_u16()).expect("Spark's REST server")
        })
    };
    use base64::Engine;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&lab.state.spark_rest_key)
        .expect("no token key in the state");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(with_token(None), 403, "in without a token");
    assert_eq!(with_token(Some(token(&[7u8; 32], now))), 403, "in with another key's token");
    assert_eq!(with_token(Some(token(&key, now - 3600))), 403, "in with an expired token");
    assert_eq!(with_token(Some(token(&key, now))), 200, "the lab's own token is refused");

    // labctl runs the lab through those doors: the job goes in over mutual TLS, and status
    // reads every service, handing out Flink's address as https.
    t.ok(&["submit", "flink"]);
    let st = t.json(&["status", "--json"]);
    let services = st["services"].as_array().expect("services");
    let jm = services.iter().find(|s| s["service"] == "flink-jobmanager").expect("no JobManager");
    assert_eq!(jm["url"], format!("https://{ip}:{}", port(PortKey::FlinkUi)), "{jm}");
    for s in services.iter().filter(|s| s["service"] != "ingest") {
        assert_eq!(s["ready"], true, "{s}");
    }
    assert!(st.to_string().contains("RUNNING"), "the job is not running: {st}");

    // The keys stay where they belong: not in a container's definition, a process's
    // arguments, or Flink's REST answers (the keystore password made at the JobManager's start).
    let jm_name = format!("{}-flink-jobmanager-1", t.project);
    let master = format!("{}-spark-master-1", t.project);
    let inspect = docker(&["inspect", &jm_name, &master]);
    let ps =
        String::from_utf8_lossy(&Command::new("ps").args(["-eo", "args"]).output().unwrap().stdout)
            .into_owned();
    let client_key_body: String = tls.client_key.lines().nth(1).unwrap_or_default().to_string();
    for (what, secret) in [
        ("the token key", lab.state.spark_rest_key.as_str()),
        ("labctl's client key", client_key_body.as_str()),
    ] {
        assert!(secret.len() > 20);
        assert!(!inspect.contains(secret), "docker inspect shows {what}");
        assert!(!ps.contains(secret), "a process shows {what}");
    }
    let conf = docker(&["exec", &jm_name, "cat", "/opt/flink/conf/config.yaml"]);
    let keystore_password = conf
        .lines()
        .find_map(|l| l.strip_prefix("security.ssl.rest.keystore-password: "))
        .expect("no REST keystore in the JobManager's configuration")
        .to_string();
    let config_answer = {
        let (client, url) = (
            http(Some((&tls.ca, Some(tls.client_identity())))),
            format!("https://{ip}:{}/jobmanager/config", port(PortKey::FlinkUi)),
        );
        rt.block_on(async move { client.get(url).send().await.unwrap().text().await.unwrap() })
    };
    assert!(config_answer.contains("security.ssl.rest.keystore-password"), "{config_answer}");
    assert!(
        !config_answer.contains(&keystore_password),
        "Flink's REST API shows the keystore password"
    );
    let out = Command::new("docker").args(["logs", &jm_name]).output().unwrap();
    let logs =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(logs.contains("REST: mutual TLS"), "the JobManager did not turn mutual TLS on");
    assert!(!logs.contains(&keystore_password), "the JobManager's log shows the keystore password");

    // A lost state file: `up` reads the certificates and the token key back from the
    // containers, changes none, and labctl gets in as before.
    std::fs::remove_file(t.state_dir.path().join(format!("{}.json", t.project))).unwrap();
    let again = t.json(&["up", "--json"]);
    assert_eq!(again["containers_changed"], 0, "{again}");
    let back = t.lab();
    assert_eq!(back.state.flink_rest_tls, Some(tls), "other certificates after the rebuild");
    assert_eq!(back.state.spark_rest_key, lab.state.spark_rest_key);
    let st = t.json(&["status", "--json"]);
    assert!(st.to_string().contains("RUNNING"), "{st}");
}
