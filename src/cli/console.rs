//! `labctl console`: the lab in one local web page. An HTTP server (axum) on loopback serving an
//! application embedded in the binary (no CDN, no internet) and the JSON it reads; the data
//! comes from `ops::console`. Read-only unless started with `--allow-actions`; then every
//! mutating request needs the session token printed at start and must come from the page's own
//! origin. Every request must name this server as its Host, so a web page elsewhere cannot
//! reach it through a rebound DNS name.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};
use axum::{
    extract::{Path, Query, Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;

use crate::{
    clients::docker::Runtime,
    model::{config::Config, fleet::SENSORS},
    ops::{
        console::{self, browse, Hub},
        lab::Lab,
    },
};

const DEFAULT_PORT: u16 = 8420;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = DEFAULT_PORT, value_name = "N")]
    port: u16,
    /// Address to listen on. Anything but loopback makes the lab's data readable by whoever
    /// reaches this machine.
    #[arg(long, default_value = "127.0.0.1", value_name = "IP")]
    bind: IpAddr,
    /// Open the page in the desktop's browser (xdg-open).
    #[arg(long)]
    open: bool,
    /// Allow the page to change the lab (submit, cancel, export, scale), with the session token
    /// printed at start; without it the console is read-only.
    #[arg(long)]
    allow_actions: bool,
    /// Seconds between refreshes of the pipeline view.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    every: f64,
}

/// What the handlers share.
struct Console {
    hub: Arc<Hub>,
    /// Host header values this server answers to (`127.0.0.1:8420`, `localhost:8420`).
    hosts: Vec<String>,
    /// None: read-only.
    token: Option<String>,
    /// How an action runs labctl again: the binary and the global options this one was given.
    relaunch: Relaunch,
    /// One action at a time; the lab's own lock serializes them with the command line too.
    action: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
pub struct Relaunch {
    pub config: Option<PathBuf>,
    pub project: String,
}

impl Relaunch {
    /// labctl's own binary with this invocation's `--config` and `--project`; the caller adds
    /// the subcommand.
    pub fn command(&self) -> Result<tokio::process::Command> {
        let exe = std::env::current_exe().context("cannot find labctl's own binary")?;
        let mut cmd = tokio::process::Command::new(exe);
        if let Some(cfg) = &self.config {
            cmd.arg("--config").arg(cfg);
        }
        cmd.arg("--project").arg(&self.project);
        Ok(cmd)
    }
}

pub async fn run(config: Config, relaunch: Relaunch, args: Args) -> Result<ExitCode> {
    // A console stays up for hours beside the lab's JVMs: one malloc arena for all its threads
    // instead of one per thread that allocated (`labctl bench console` measures the difference).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tuning parameter of glibc's allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let lab = Lab::existing(config)?;
    let rt = Runtime::connect().await?;
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow!(
            "port {} on {} is taken (another console or program listens there); pick another with `--port N`, or `--port 0` for any free port",
            args.port,
            args.bind
        ),
        _ => anyhow!("cannot listen on {addr}: {e}"),
    })?;
    let local = listener.local_addr().context("the console's own address")?;
    let port = local.port();
    let mut hosts = vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")];
    if !args.bind.is_loopback() {
        hosts.push(format!("{}:{port}", host_text(args.bind)));
        eprintln!(
            "warning: listening on {} beyond loopback: whoever reaches it reads the lab's data",
            args.bind
        );
    }
    let token = args.allow_actions.then(new_token);
    let every = Duration::from_secs_f64(args.every.clamp(0.5, 60.0));
    let hub = Hub::new(lab, rt, every, Duration::from_secs(2));
    tokio::spawn(hub.clone().run());
    let state = Arc::new(Console {
        hub,
        hosts,
        token: token.clone(),
        relaunch,
        action: tokio::sync::Mutex::new(()),
    });
    let url = format!(
        "http://{}:{port}/",
        host_text(if args.bind.is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            args.bind
        })
    );
    match &token {
        // The token travels in the fragment, which the browser never sends to the server.
        Some(t) => println!("labctl console: {url}#token={t}\n(actions allowed with this link's token; Ctrl-C to stop)"),
        None => println!("labctl console: {url}\n(read-only; restart with --allow-actions to submit, cancel, export or scale from the page; Ctrl-C to stop)"),
    }
    if args.open {
        let target = match &token {
            Some(t) => format!("{url}#token={t}"),
            None => url.clone(),
        };
        if let Err(e) = std::process::Command::new("xdg-open").arg(&target).spawn() {
            eprintln!("cannot open a browser ({e}); open {url} yourself");
        }
    }
    let app = router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            tokio::signal::ctrl_c().await.ok();
        })
        .await
        .context("serving the console")?;
    Ok(ExitCode::SUCCESS)
}

fn host_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn router(state: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/api/meta", get(meta))
        .route("/api/snapshot", get(snapshot))
        .route("/api/events", get(events))
        .route("/api/topic/messages", get(messages))
        .route("/api/rejects", get(rejects))
        .route("/api/windows", get(windows))
        .route("/api/machines", get(machines))
        .route("/api/containers", get(containers))
        .route("/api/containers/{name}/logs", get(logs))
        .route("/api/verify", post(verify))
        .route("/api/actions/{action}", post(action))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// An answer a person reads: `{"error": "..."}` with its status.
fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

fn failed(e: anyhow::Error) -> Response {
    if let Some(bad) = e.downcast_ref::<browse::BadQuery>() {
        return error(StatusCode::BAD_REQUEST, bad.0.clone());
    }
    error(StatusCode::BAD_GATEWAY, format!("{e:#}"))
}

/// Every request: a Host this server answers to; for a POST also the page's own origin and,
/// for actions, the token. Headers that keep the page from being framed or sniffed.
async fn guard(State(c): State<Arc<Console>>, req: Request, next: Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !c.hosts.iter().any(|h| h == host) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            format!("this console answers to {}, not `{host}`", c.hosts.join(" or ")),
        );
    }
    if req.method() == Method::POST {
        if let Err(why) = same_origin(req.headers(), host) {
            return error(StatusCode::FORBIDDEN, why);
        }
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    res
}

/// A mutating request must say it comes from this very page: an Origin of this host (browsers
/// send it with every POST) and, where the browser tells, a same-origin fetch.
pub fn same_origin(headers: &HeaderMap, host: &str) -> Result<(), String> {
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if origin != Some(format!("http://{host}").as_str()) {
        return Err(format!(
            "refused: the request's origin {} is not this console (http://{host})",
            origin.unwrap_or("(none)")
        ));
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|s| s.to_str().ok()) {
        if site != "same-origin" {
            return Err(format!("refused: a {site} request"));
        }
    }
    Ok(())
}

/// Whether `given` is the session's token, compared in constant time.
fn token_ok(expected: &str, given: Option<&str>) -> bool {
    let Some(given) = given else { return false };
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const INDEX: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");

async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => {
            ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS).into_response()
        }
        "app.css" => ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response(),
        _ => error(StatusCode::NOT_FOUND, format!("no asset {file}")),
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such page or endpoint (the console starts at /)")
}

async fn meta(State(c): State<Arc<Console>>) -> Response {
    let lab = &c.hub.lab;
    let url = |key| lab.stack.url(key);
    use crate::model::config::PortKey;
    Json(serde_json::json!({
        "project": lab.stack.project,
        "topic": lab.config.broker.topic,
        "partitions": lab.config.broker.partitions,
        "sensors": SENSORS.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "read_only": c.token.is_none(),
        "refresh_secs": c.hub.every.as_secs_f64(),
        "flink_ui": url(PortKey::FlinkUi),
        "spark_ui": url(PortKey::SparkUi),
    }))
    .into_response()
}

async fn snapshot(State(c): State<Arc<Console>>) -> Response {
    match c.hub.current().await {
        Ok(s) => ([(header::CONTENT_TYPE, "application/json")], s.json.to_string()).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}

async fn events(State(c): State<Arc<Console>>) -> Response {
    let rx = c.hub.subscribe();
    let every = c.hub.every;
    let stream = futures_util::stream::unfold((rx, true), move |(mut rx, first)| async move {
        if !first {
            rx.changed().await.ok()?;
        }
        loop {
            // A stream opened on an idle console waits for the refresh it woke up, rather than
            // showing minutes-old figures first.
            let current = rx.borrow_and_update().clone();
            if let Some(s) = current.filter(|s| !first || s.taken.elapsed() < every * 2) {
                let ev = Event::default().event("snapshot").data(&*s.json);
                return Some((Ok::<_, Infallible>(ev), (rx, false)));
            }
            rx.changed().await.ok()?;
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

async fn messages(
    State(c): State<Arc<Console>>,
    Query(q): Query<browse::MessageQuery>,
) -> Response {
    match c.hub.messages(q, Duration::from_secs(5)).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<i64>,
}

async fn rejects(State(c): State<Arc<Console>>, Query(q): Query<Limit>) -> Response {
    match console::rejects(&c.hub.lab, q.limit.unwrap_or(10).clamp(1, 100), Duration::from_secs(5))
        .await
    {
        Ok(r) => Json(r).into_response(),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
struct WindowArgs {
    machine: String,
    sensor: String,
    hours: Option<u32>,
}

async fn windows(State(c): State<Arc<Console>>, Query(q): Query<WindowArgs>) -> Response {
    if let Err(e) = crate::model::fleet::check_machine_id(&q.machine) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    if let Err(e) = crate::model::fleet::check_sensor(&q.sensor) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let hours = q.hours.unwrap_or(6).clamp(1, 168);
    match console::windows(&c.hub.lab, &q.machine, &q.sensor, hours, Duration::from_secs(5)).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, format!("{e:#}")),
    }
}

async fn machines(State(c): State<Arc<Console>>) -> Response {
    match console::machines(&c.hub.lab, Duration::from_secs(5)).await {
        Ok(m) => Json(m).into_response(),
        Err(e) => failed(e),
    }
}

async fn containers(State(c): State<Arc<Console>>) -> Response {
    match console::containers(&c.hub.lab, &c.hub.rt).await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
struct Lines {
    lines: Option<usize>,
}

async fn logs(
    State(c): State<Arc<Console>>,
    Path(name): Path<String>,
    Query(q): Query<Lines>,
) -> Response {
    let lines = q.lines.unwrap_or(200).clamp(1, 5000);
    match console::log_tail(&c.hub.lab, &c.hub.rt, &name, lines).await {
        Ok(Some(text)) => {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no container `{name}` in lab `{}`", c.hub.lab.stack.project),
        ),
        Err(e) => failed(e),
    }
}

/// `labctl verify`'s comparison, on request: it reads the whole topic, so it is not part of the
/// refresh. Changes nothing, so it needs no token.
async fn verify(State(c): State<Arc<Console>>) -> Response {
    let Ok(_one) = c.action.try_lock() else {
        return error(
            StatusCode::CONFLICT,
            "another action or verification is running; wait for it",
        );
    };
    // Its future is not provably Send (a closure over borrowed lake files), so it runs on a
    // blocking thread of its own, driven by this runtime's handle.
    let (lab, handle) = (c.hub.lab.clone(), tokio::runtime::Handle::current());
    let run = tokio::task::spawn_blocking(move || {
        handle.block_on(crate::ops::verify::run(&lab, Duration::from_secs(10)))
    });
    match run.await {
        Ok(Ok(r)) => Json(r).into_response(),
        Ok(Err(e)) => failed(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("verification stopped: {e}")),
    }
}

/// The command line an action runs, as a user would type it after `labctl`.
pub fn action_args(action: &str, body: &serde_json::Value) -> Result<Vec<String>, String> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    Ok(match action {
        "submit-flink" => s(&["submit", "flink"]),
        "replace-flink" => s(&["submit", "flink", "--replace"]),
        "cancel-flink" => s(&["flink", "cancel"]),
        "export" => s(&["submit", "spark"]),
        "scale" => {
            let service = body["service"].as_str().unwrap_or("");
            if !matches!(service, "flink-taskmanager" | "spark-worker") {
                return Err(format!(
                    "scale: `service` must be flink-taskmanager or spark-worker, not `{service}`"
                ));
            }
            let n = body["replicas"]
                .as_u64()
                .filter(|n| (1..=8).contains(n))
                .ok_or("scale: `replicas` must be a number from 1 to 8")?;
            vec!["scale".into(), service.into(), n.to_string()]
        }
        other => {
            return Err(format!(
                "no action `{other}` (submit-flink, replace-flink, cancel-flink, export, scale)"
            ))
        }
    })
}

async fn action(
    State(c): State<Arc<Console>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Option<Json<serde_json::Value>>,
) -> Response {
    let Some(token) = &c.token else {
        return error(StatusCode::FORBIDDEN, "the console is read-only: start it with `labctl console --allow-actions` to change the lab from the page");
    };
    if !token_ok(token, headers.get("x-labctl-token").and_then(|t| t.to_str().ok())) {
        return error(StatusCode::FORBIDDEN, "refused: the session token is missing or wrong (open the link `labctl console` printed)");
    }
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let args = match action_args(&name, &body) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Ok(_one) = c.action.try_lock() else {
        return error(StatusCode::CONFLICT, "another action is running; wait for it");
    };
    let mut cmd = match c.relaunch.command() {
        Ok(cmd) => cmd,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    };
    cmd.args(&args);
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    tracing::info!("console action {name}: labctl {}", args.join(" "));
    let started = std::time::Instant::now();
    match cmd.output().await {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let code = out.status.code();
            let status = if out.status.success() {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            (
                status,
                Json(serde_json::json!({
                    "action": name,
                    "command": format!("labctl {}", args.join(" ")),
                    "exit_code": code,
                    "ok": out.status.success(),
                    "secs": started.elapsed().as_secs_f64(),
                    "output": text,
                })),
            )
                .into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot run labctl {}: {e}", args.join(" ")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_the_pages_own_origin_may_post() {
        let host = "127.0.0.1:8420";
        assert!(same_origin(
            &headers(&[("origin", "http://127.0.0.1:8420"), ("sec-fetch-site", "same-origin")]),
            host
        )
        .is_ok());
        assert!(same_origin(&headers(&[]), host).unwrap_err().contains("(none)"));
        assert!(same_origin(&headers(&[("origin", "http://evil.example")]), host).is_err());
        assert!(same_origin(
            &headers(&[("origin", "http://127.0.0.1:8420"), ("sec-fetch-site", "cross-site")]),
            host
        )
        .is_err());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_ok("abc", Some("abc")));
        assert!(!token_ok("abc", Some("abd")));
        assert!(!token_ok("abc", Some("ab")));
        assert!(!token_ok("abc", None));
    }

    #[test]
    fn actions_are_the_commands_a_user_types() {
        let none = serde_json::Value::Null;
        assert_eq!(action_args("export", &none).unwrap(), ["submit", "spark"]);
        assert_eq!(
            action_args("scale", &serde_json::json!({"service": "spark-worker", "replicas": 2}))
                .unwrap(),
            ["scale", "spark-worker", "2"]
        );
        assert!(action_args(
            "scale",
            &serde_json::json!({"service": "timescaledb", "replicas": 2})
        )
        .is_err());
        assert!(action_args(
            "scale",
            &serde_json::json!({"service": "spark-worker", "replicas": 9})
        )
        .is_err());
        assert!(action_args("rm -rf", &none).unwrap_err().contains("no action"));
    }
}
