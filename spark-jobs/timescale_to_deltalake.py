"""Batch export: TimescaleDB (JDBC) -> Delta Lake on Azure Blob storage (Azurite), written by Delta
Lake's own Spark writer through Hadoop's WASB driver; rendered and submitted by `labctl` (config
from templates/spark/export.json.tera).

Usage (as the Python application of a Spark driver):
    timescale_to_deltalake.py '<config JSON>'
    timescale_to_deltalake.py @/path/to/config.json
    timescale_to_deltalake.py @https://account.blob.example/container/config.json?<SAS>
  A config fetched over http(s) (how labctl ships it: a SAS URL with read and delete permission
  of a blob in the lake) is deleted right after it is read, with a DELETE on the same URL: it
  holds the database password and the storage key. A failed deletion is a warning on stderr.

Config (all keys required unless marked optional):
    {
      "jdbc_url":    "jdbc:postgresql://timescaledb:5432/iiot",
      "db_user":     "lab",
      "db_password": "...",
      "tables": [                                   # exported one after the other
        {"name": "machine_sensors", "time_column": "timestamp", "delta_path": "machine_sensors",
         "checksum_columns": ["value"]},            # optional: numeric columns summed per day
        ...
      ],
      "range": {"from": null, "to": null},          # optional: ISO-8601 strings (UTC; "Z", an
                                                    # offset, or none = UTC; a bare date =
                                                    # midnight UTC) or null; widened to whole UTC
                                                    # days [midnight(from), next midnight >= to)
      "partitions": 4,                              # JDBC read partitions (= Spark tasks), >= 1
      "read_only": false,                           # optional: compare, then read the differing
                                                    # days over JDBC and count them; write and
                                                    # commit nothing (a benchmark's baseline)
      "vacuum": null,                               # optional: {"retain_hours": H or null} runs
                                                    # Delta's VACUUM on the tables instead of an
                                                    # export (null hours: Delta's 7 days)
      "result_url": null,                           # optional: a URL (a blob SAS with create and
                                                    # write permission) the job PUTs its result to
      "lake": {
        "account":   "devstoreaccount1",
        "key":       "...",                         # shared key (base64)
        "endpoint":  "http://devstoreaccount1.blob.core.windows.net",  # as this cluster reaches
                                                    # it: http(s)://<account>.<domain>[:port]
        "container": "lake"
      }
    }
    The Delta table of each entry is wasb[s]://<container>@<endpoint host>/<delta_path> (wasbs for
    an https endpoint). WASB reaches an account by its host name only (no path-style endpoint);
    the lab's network gives its Azurite the alias devstoreaccount1.blob.core.windows.net, port 80.
    The key goes into the SparkContext's Hadoop configuration
    (fs.azure.account.key.<host>) at run time: never into an environment variable, a Spark
    property of the submission, an argument or a log line.

What is exported is decided by what the lake holds, not by a time margin. Per table and UTC day
(within the range, if one is given), the database's rows are compared with the Delta table's
current version: the number of rows, the sum of the time column in epoch microseconds (exact) and
the sum of each checksum column (within a relative 1e-10). Exactly the days where the database
has rows and the lake differs (or has none) are rewritten, all of them in ONE Delta transaction:
`format("delta").mode("overwrite").option("replaceWhere", <those days>)`, partitioned by
year/month/day, from a parallel JDBC read of just those days. So a reading that reaches the
database late, with an old timestamp, is in the lake after the next export. Days the lake holds
and the database does not (e.g. dropped chunks) are kept: the lake may be the only copy left.

The lake's figures come from its _delta_log, read through Hadoop's FileSystem before any
SparkContext exists (class LakeLog): rows per day are the live files' numRecords, and the sums
are those recorded by the export that last wrote the day: the database's figures of exactly the
rows it wrote. The comparison runs in a REPEATABLE READ transaction whose snapshot it exports
(pg_export_snapshot), and every JDBC read of the export imports that snapshot (SET TRANSACTION
SNAPSHOT), so the rows are read from the database as they were when compared, in one pass that
writes them as it reads them; the counts of rows read, rows committed and rows in the snapshot
must agree. The comparison's connection holds the snapshot until the commit. Each export commit carries
userMetadata {"labctl.export": {"run", "table", "days", "rows", "as_of" (ISO instant of its
comparison), "summary": {"<epoch day>": [rows, "<sum of epoch us>", [sums]]}}}. A day another
writer touched since, or whose numRecords disagree with the record, compares as different. So a
run with nothing to change starts no Spark at all. When early commits survive only in a
checkpoint, the table's data is read with Spark instead.

Exports at the same time: Delta's optimistic concurrency. A transaction that replaces days
another export committed since it started fails Delta's conflict check
(ConcurrentAppendException, ConcurrentDeleteReadException, ...; two creators of a new table:
ProtocolChangedException); this job then compares again and retries (ATTEMPTS in all), so both
exports end with the table equal to the database and no row doubled: replaceWhere replaces the
days, it never appends to them. A killed export commits nothing (a Delta commit is one atomic
log entry); its written files stay unreferenced until VACUUM deletes them, and the re-run
compares and rewrites what differs (idempotent by replaceWhere, no transaction ids needed).
An export never vacuums; a vacuum run (config "vacuum") keeps Delta's default 7 days unless
asked for less, so no file a reader of a version of the last week or a running export needs is
deleted.

In the code: load_config returns a JobConfig. Per table, plan_export compares and returns an
ExportPlan (the days to rewrite and why, the replaceWhere predicate; nothing written), read_days
reads those days over JDBC, write_days commits them, find_commit finds the commit in the log;
export_table plans again after a conflicting commit.

Table schema: the source columns (timestamptz -> Delta timestamp, Parquet TIMESTAMP_MICROS;
double, string, long, integer) plus partition columns year, month, day (integer, UTC).

Output: on success one stdout line
    LABCTL_RESULT {"rows_read":..,"rows_written":..,"files":..,"files_removed":..,
                   "delta_version":..,"committed":..,"partitions":[["2026","11","17"],..],
                   "days_compared":..,"days_rewritten":..,"tables":[..],"message":"..",
                   "startup":{..},"read_only":..,"seconds":..}
  summed/merged over the tables; partitions are the days rewritten; delta_version is the first
  table's version after the run (null if the table does not exist); seconds counts from the
  driver JVM's start. Each entry of "tables" has name, delta_uri, from, to (the compared range,
  ISO, null = open), committed, rows_read, rows_written, files, files_removed, delta_version,
  previous_version, partitions, days_compared, days_rewritten, days_only_in_lake, differences
  (the first days that differed: day, database and lake rows), attempts, message, phases
  (seconds per step: compare_db, compare_lake, spark_start, read, write, commit; an export's
  tasks read and write in one pass, its "write", and "read" is the read_only run's read),
  days_unknown_in_lake, lake_compared_from ("log" or "data") and seconds.
Spark property spark.labctl.driverTaskThreads=N (optional, set by labctl when the cluster has one
worker and the driver was granted its cores): the tasks run inside the driver with N threads
(local[N,maxFailures]) instead of on executors.
Submission needs the PostgreSQL JDBC driver in spark.jars (also used on the driver for the
comparison query) and delta-spark, delta-storage, hadoop-azure and azure-storage on the class
path of driver and executors (docker/spark/maven/pom.xml; the lab's image has them in
$SPARK_HOME/jars).
On failure one line `LABCTL_ERROR <message>` on stdout (and stderr when that is a different
stream), then the traceback; the process exits non-zero (driverState FAILED).
With result_url set, the same JSON as the LABCTL_RESULT line is also PUT there on success, and
on failure {"error": "<exception type: message>", "traceback_tail": "<last lines>"} (a config
that cannot be read has no result_url to report to). A failed PUT is a warning on stderr; it
changes neither the output nor the exit status.
"""

import datetime as dt
import json
import os
import re
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field

T0 = time.time()
PREFIX_RESULT = "LABCTL_RESULT "
PREFIX_ERROR = "LABCTL_ERROR "
PARTITION_COLUMNS = ["year", "month", "day"]
DAY_US = 86_400_000_000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# Compare, write, commit: tries in all when a concurrent export's commit conflicts with ours.
ATTEMPTS = 3
# Sums of a checksum column agree when within this relative difference (database and Spark add
# the same doubles in different orders).
SUM_TOLERANCE = 1e-10
# Days listed in a table's "differences" (all of them are counted).
DIFFERENCES_SHOWN = 10
# Fetching the config, deleting it, writing the result: each call is small.
HTTP_TIMEOUT_SECONDS = 30
# Blob service version of those calls (sent as x-ms-version).
BLOB_API_VERSION = "2021-08-06"
TRACEBACK_TAIL_LINES = 15
# The WASB driver's retries (its defaults: 30 tries with back-off up to 30 s, i.e. many minutes
# before an unreachable lake is an error).
WASB_SETTINGS = {
    "fs.azure.io.retry.max.retries": "3",
    "fs.azure.io.retry.min.backoff.interval": "500",
    "fs.azure.io.retry.backoff.interval": "1000",
    "fs.azure.io.retry.max.backoff.interval": "4000",
    "fs.azure.storage.timeout": "60",
    # The SAS-key service mode is off: the account key signs every request.
    "fs.azure.secure.mode": "false",
}
# Delta's names for a commit that lost against a concurrent one (Java class simple names).
CONFLICTS = ("ConcurrentAppendException", "ConcurrentDeleteReadException",
             "ConcurrentDeleteDeleteException", "ConcurrentTransactionException",
             "ConcurrentWriteException", "MetadataChangedException", "ProtocolChangedException",
             "DeltaConcurrentModificationException")


# What pg_export_snapshot() returns ("00000003-0000001B-1"): checked before it is put into SQL.
SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")
# java.sql.Connection.TRANSACTION_REPEATABLE_READ
REPEATABLE_READ = 4


class JobError(Exception):
    """An error with a one-line, user-facing message."""


def log(msg):
    print(f"[labctl-export +{time.time() - T0:6.2f}s] {msg}", flush=True)


def one_line(text, limit=400):
    """Condense a (multi-line, possibly ANSI-coloured) error text into one line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))
    text = text.replace("\u21b3", " ")
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def java_root_cause(exc):
    """Innermost Java exception message of a Py4JJavaError (else the Python message)."""
    jexc = getattr(exc, "java_exception", None) or getattr(exc, "_origin", None)
    if jexc is None:
        return one_line(exc)
    try:
        cause = jexc
        while cause.getCause() is not None and cause.getCause() != cause:
            cause = cause.getCause()
        return one_line(f"{cause.getClass().getName()}: {cause.getMessage()}")
    except Exception:  # noqa: BLE001
        return one_line(exc)


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------

def parse_instant(value, what):
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise JobError(f"malformed range: {what} must be an ISO-8601 UTC timestamp string or null, "
                       f"got {json.dumps(value)}")
    text = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            parsed = dt.datetime.fromisoformat(text + "T00:00:00")
        else:
            parsed = dt.datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise JobError(f"malformed range: {what} is not an ISO-8601 timestamp: {json.dumps(value)} "
                       "(expected e.g. \"2026-11-17T00:00:00Z\")") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.astimezone(dt.timezone.utc)


def without_query(url):
    """A URL for messages: a SAS query string is a credential."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def blob_request(url, method, data=None, headers=None):
    """One HTTP call to blob storage; returns the body. Raises OSError (urllib's errors are
    subclasses) on failure."""
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"x-ms-version": BLOB_API_VERSION, **(headers or {})})
    with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_SECONDS) as resp:
        return resp.read()


def http_error_text(exc):
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    return str(getattr(exc, "reason", None) or exc)


def fetch_config(url):
    """The config at an http(s) URL, then deleted there (it holds the database password)."""
    try:
        text = blob_request(url, "GET").decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobError(f"cannot fetch the config from {without_query(url)}: "
                       f"{http_error_text(exc)}") from None
    try:
        blob_request(url, "DELETE")
    except OSError as exc:
        print(f"warning: cannot delete the config at {without_query(url)} after reading it: "
              f"{http_error_text(exc)}", file=sys.stderr, flush=True)
    return text


def put_result(url, doc):
    """PUTs the result document as a block blob; a failure is only a warning."""
    body = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    try:
        blob_request(url, "PUT", data=body, headers={"x-ms-blob-type": "BlockBlob",
                                                     "Content-Type": "application/json"})
    except OSError as exc:
        print(f"warning: cannot write the result to {without_query(url)}: {http_error_text(exc)}",
              file=sys.stderr, flush=True)


def wasb_authority(lake):
    """(https?, "<account>.<domain>[:port]") of the lake's endpoint, as WASB addresses it."""
    parts = urllib.parse.urlsplit(lake["endpoint"])
    host = parts.hostname or ""
    if (parts.scheme not in ("http", "https") or parts.path.strip("/") or "." not in host
            or host.split(".")[0] != lake["account"]):
        raise JobError(f"lake.endpoint {lake['endpoint']!r}: Hadoop's WASB driver reaches a storage "
                       f"account by its host name; use http(s)://{lake['account']}.<domain>[:port] "
                       "as this cluster reaches it (the lab's Azurite: "
                       "http://devstoreaccount1.blob.core.windows.net), not a path-style URL")
    return parts.scheme == "https", host + (f":{parts.port}" if parts.port else "")


@dataclass(frozen=True)
class LakeConfig:
    account: str
    key: str = field(repr=False)  # a credential: never in a log line, not even by accident
    endpoint: str
    container: str
    https: bool  # wasbs rather than wasb
    authority: str  # "<account>.<domain>[:port]": how WASB names the account


@dataclass(frozen=True)
class TableConfig:
    name: str
    time_column: str
    delta_path: str
    checksum_columns: tuple[str, ...]


@dataclass(frozen=True)
class JobConfig:
    """The config as load_config validated it (the keys are described above)."""
    jdbc_url: str
    db_user: str
    db_password: str = field(repr=False)
    tables: tuple[TableConfig, ...]
    lake: LakeConfig
    range_from: dt.datetime | None
    range_to: dt.datetime | None
    partitions: int
    read_only: bool
    # A vacuum run instead of an export: "vacuum" given as a non-empty object. An empty one
    # ({}) has always meant an export.
    vacuum: bool
    # As given (int or float, or None for Delta's default): the result reports it unchanged.
    retain_hours: int | float | None
    result_url: str | None

    @property
    def lo_day(self):
        """First day compared (the range widened to whole UTC days), None = open."""
        return epoch_day(floor_day(self.range_from)) if self.range_from else None

    @property
    def hi_day(self):
        """Day after the last one compared, None = open."""
        return epoch_day(ceil_day(self.range_to)) if self.range_to else None


def config_text(argv):
    """The config's JSON text: the argument itself, or the file or URL it names with @."""
    if len(argv) < 2 or not argv[1].strip():
        raise JobError("usage: timescale_to_deltalake.py '<config JSON>' | @<config file> | "
                       "@<http(s) URL>")
    arg = argv[1]
    if arg.startswith(("@http://", "@https://")):
        return fetch_config(arg[1:])
    if arg.startswith("@"):
        try:
            with open(arg[1:], encoding="utf-8") as fh:
                return fh.read()
        except OSError as exc:
            raise JobError(f"cannot read config file {arg[1:]}: {exc.strerror}") from None
    return arg


def table_config(t):
    if not isinstance(t, dict) or not all(isinstance(t.get(k), str) and t.get(k)
                                          for k in ("name", "time_column", "delta_path")):
        raise JobError(f"each table needs string name, time_column, delta_path: {json.dumps(t)}")
    sums = t.get("checksum_columns", [])
    if not isinstance(sums, list) or not all(isinstance(c, str) and c for c in sums):
        raise JobError(f"checksum_columns must be a list of column names: {json.dumps(t)}")
    # Delta (and Hadoop's listings) treat _ and . names as hidden or their own
    if any(seg.startswith(("_", ".")) for seg in t["delta_path"].strip("/").split("/")):
        raise JobError(f"delta_path {t['delta_path']!r}: no segment may start with _ or .")
    return TableConfig(t["name"], t["time_column"], t["delta_path"], tuple(sums))


def lake_config(lake):
    for key in ("account", "key", "container", "endpoint"):
        if not isinstance(lake, dict) or not lake.get(key):
            raise JobError(f"config key missing: lake.{key}")
    https, authority = wasb_authority(lake)
    return LakeConfig(lake["account"], lake["key"], lake["endpoint"], lake["container"],
                      https, authority)


def config_range(rng):
    """(from, to) as aware UTC instants or None."""
    rng = rng or {}
    if not isinstance(rng, dict):
        raise JobError("malformed range: range must be an object {\"from\":..,\"to\":..}")
    lo = parse_instant(rng.get("from"), "range.from")
    hi = parse_instant(rng.get("to"), "range.to")
    if lo is not None and hi is not None and lo >= hi:
        raise JobError(f"malformed range: from ({rng.get('from')}) must be before to "
                       f"({rng.get('to')})")
    return lo, hi


def config_partitions(value):
    try:
        partitions = 4 if value is None else int(value)
    except (TypeError, ValueError):
        raise JobError(f"partitions must be an integer: {json.dumps(value)}") from None
    if partitions < 1:
        raise JobError("partitions must be >= 1")
    return partitions


def config_retain_hours(vac):
    """The retention a vacuum run asks for (None: Delta's default), or None without a vacuum."""
    if vac is None:
        return None
    hours = vac.get("retain_hours") if isinstance(vac, dict) else "bad"
    if hours is not None and (isinstance(hours, bool) or not isinstance(hours, (int, float))
                              or hours < 0):
        raise JobError("vacuum must be {\"retain_hours\": <hours >= 0 or null>}")
    return hours


def load_config(argv):
    """The validated config of the command line. Checked in a fixed order: of several problems,
    the first one is reported, before anything is connected to."""
    try:
        raw = json.loads(config_text(argv))
    except json.JSONDecodeError as exc:
        raise JobError(f"config is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise JobError("config must be a JSON object")
    for key in ("jdbc_url", "db_user", "db_password", "tables", "lake"):
        if key not in raw:
            raise JobError(f"config key missing: {key}")
    if not isinstance(raw["tables"], list) or not raw["tables"]:
        raise JobError("config key tables must be a non-empty list")
    tables = tuple(table_config(t) for t in raw["tables"])
    lake = lake_config(raw["lake"])
    range_from, range_to = config_range(raw.get("range"))
    partitions = config_partitions(raw.get("partitions"))
    read_only = raw.get("read_only", False)
    if not isinstance(read_only, bool):
        raise JobError(f"read_only must be true or false: {json.dumps(read_only)}")
    retain_hours = config_retain_hours(raw.get("vacuum"))
    result_url = raw.get("result_url")
    if result_url is not None and not (isinstance(result_url, str)
                                       and result_url.startswith(("http://", "https://"))):
        raise JobError("result_url must be an http(s) URL or null")
    return JobConfig(jdbc_url=raw["jdbc_url"], db_user=raw["db_user"],
                     db_password=raw["db_password"], tables=tables, lake=lake,
                     range_from=range_from, range_to=range_to, partitions=partitions,
                     read_only=read_only, vacuum=bool(raw.get("vacuum")),
                     retain_hours=retain_hours, result_url=result_url)


def quote_ident(name):
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def quote_ident_spark(name):
    """A column name for Spark SQL: in backticks, any backtick doubled."""
    return "`" + name.replace("`", "``") + "`"


# ----------------------------------------------------------------------------------------------
# Time helpers (instants are aware UTC datetimes; days are days since 1970-01-01, UTC)
# ----------------------------------------------------------------------------------------------

def iso(instant):
    return None if instant is None else instant.isoformat(timespec="microseconds").replace("+00:00", "Z")


def floor_day(instant):
    return instant.replace(hour=0, minute=0, second=0, microsecond=0)


def ceil_day(instant):
    day = floor_day(instant)
    return day if day == instant else day + dt.timedelta(days=1)


def epoch_day(instant):
    return (instant - EPOCH).days


def day_date(day):
    return dt.date(1970, 1, 1) + dt.timedelta(days=day)


def day_iso(day):
    return day_date(day).isoformat()


def day_key(day):
    d = day_date(day)
    return [str(d.year), str(d.month), str(d.day)]


def sql_ts(day):
    """Midnight UTC starting `day`, as a PostgreSQL timestamptz literal."""
    return f"'{day_iso(day)} 00:00:00+00'::timestamptz"


def sql_ts_us(us):
    instant = EPOCH + dt.timedelta(microseconds=us)
    return "'" + instant.isoformat(timespec="microseconds") + "'::timestamptz"


# ----------------------------------------------------------------------------------------------
# Errors of the JVM side
# ----------------------------------------------------------------------------------------------

def java_chain(exc):
    """Class names and messages of a Java exception and its causes (empty for a Python one)."""
    jexc = getattr(exc, "java_exception", None) or getattr(exc, "_origin", None)
    out = []
    try:
        while jexc is not None and len(out) < 20:
            out.append((str(jexc.getClass().getName()), str(jexc.getMessage())))
            cause = jexc.getCause()
            jexc = None if cause is None or cause.equals(jexc) else cause
    except Exception:  # noqa: BLE001
        pass
    return out


def is_conflict(exc):
    """A Delta commit that lost against a concurrent transaction."""
    names = [name.rsplit(".", 1)[-1] for name, _ in java_chain(exc)]
    text = str(exc)
    return any(c in names or c in text for c in CONFLICTS)


def failure_kind(exc):
    """'lake' (storage), 'jdbc' (database) or 'spark', and a one-line detail."""
    chain = java_chain(exc)
    detail = (f"{chain[-1][0]}: {chain[-1][1]}" if chain else f"{type(exc).__name__}: {exc}")
    every = " ".join(f"{n} {m}" for n, m in chain) + " " + str(exc)
    if re.search(r"PSQLException|SQLException|org\.postgresql", every):
        kind = "jdbc"
    elif re.search(r"azure|StorageException|wasb|UnknownHost|blob\.core", every, re.I):
        kind = "lake"
    else:
        kind = "spark"
    # a SAS query string is a credential: never in a message
    return kind, one_line(re.sub(r"(https?://[^\s?]+)\?\S*", r"\1", detail), limit=400)


# ----------------------------------------------------------------------------------------------
# The database side
# ----------------------------------------------------------------------------------------------

class Db:
    """A JDBC connection on the driver JVM (py4j), for the per-day comparison query. It holds
    the comparison's snapshot open until the export is committed (close())."""

    def __init__(self, jvm, cfg):
        self.url = cfg.jdbc_url
        try:
            cls = jvm.org.apache.spark.util.Utils.classForName("org.postgresql.Driver", True, False)
            driver = cls.newInstance()
            props = jvm.java.util.Properties()
            props.setProperty("user", cfg.db_user)
            props.setProperty("password", cfg.db_password)
            props.setProperty("connectTimeout", "10")
            # a database that stops answering mid-query (a frozen container) fails the run
            # instead of hanging it
            props.setProperty("socketTimeout", "600")
            props.setProperty("ApplicationName", "labctl-export")
            self.conn = driver.connect(self.url, props)
        except Exception as exc:  # noqa: BLE001
            raise JobError(f"cannot connect to the database at {self.url} as {cfg.db_user}: "
                           f"{java_root_cause(exc)}") from exc
        if self.conn is None:
            raise JobError(f"the PostgreSQL JDBC driver does not accept the URL {self.url}")

    def export_snapshot(self):
        """Begins a REPEATABLE READ transaction and exports its snapshot, in which the
        comparison runs next. The export's JDBC reads import it (snapshot_import): they read
        exactly the rows whose figures the comparison computed, however the table changes
        meanwhile, so those figures are recorded with the commit without a pass of their own."""
        try:
            self.conn.setAutoCommit(False)
            self.conn.setTransactionIsolation(REPEATABLE_READ)
            stmt = self.conn.createStatement()
            rs = stmt.executeQuery("SELECT pg_export_snapshot()")
            rs.next()
            snapshot = rs.getString(1)
            stmt.close()
        except Exception as exc:  # noqa: BLE001
            raise JobError(f"cannot export a snapshot of the database at {self.url}: "
                           f"{java_root_cause(exc)} (the export needs PostgreSQL's "
                           "pg_export_snapshot; a pooler in transaction mode does not keep it)"
                           ) from exc
        return snapshot

    def day_summary(self, table, time_column, sums, lo_day, hi_day):
        """{day: (rows, sum of epoch microseconds, [sum of each checksum column])} of the days
        in [lo_day, hi_day) (None = open) that have rows."""
        tc = quote_ident(time_column)
        cond = []
        if lo_day is not None:
            cond.append(f"{tc} >= {sql_ts(lo_day)}")
        if hi_day is not None:
            cond.append(f"{tc} < {sql_ts(hi_day)}")
        where = (" WHERE " + " AND ".join(cond)) if cond else ""
        # extract(epoch) is numeric with microseconds (PostgreSQL 14+): the sum is exact
        cols = [f"floor(extract(epoch from {tc}) / 86400)::bigint", "count(*)",
                f"sum(round(extract(epoch from {tc}) * 1000000))::text"]
        cols += [f"sum({quote_ident(c)})::float8" for c in sums]
        sql = f"SELECT {', '.join(cols)} FROM {quote_ident(table)}{where} GROUP BY 1"
        out = {}
        try:
            stmt = self.conn.createStatement()
            rs = stmt.executeQuery(sql)
            while rs.next():
                day = rs.getLong(1)
                out[day] = (rs.getLong(2), int(rs.getString(3)),
                            [rs.getDouble(4 + i) for i in range(len(sums))])
            stmt.close()
        except Exception as exc:  # noqa: BLE001
            raise JobError(f"the comparison query on table {table} failed: "
                           f"{java_root_cause(exc)}") from exc
        return out

    def close(self):
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass


def jdbc_predicates(time_column, days, db_days, n):
    """WHERE clauses, one per Spark task, that together read exactly `days` (sorted), balanced
    by the database's row counts: whole days grouped when there are at least n of them, else each
    day cut into equal time slices."""
    tc = quote_ident(time_column)
    if len(days) >= n:
        total = sum(db_days[d][0] for d in days) or 1
        groups, acc = [[]], 0
        for d in days:
            if groups[-1] and acc >= total * len(groups) / n and len(groups) < n:
                groups.append([])
            groups[-1].append(d)
            acc += db_days[d][0]
        preds = []
        for g in groups:
            runs, start, prev = [], g[0], g[0]
            for d in g[1:] + [None]:
                if d is not None and d == prev + 1:
                    prev = d
                    continue
                runs.append(f"({tc} >= {sql_ts(start)} AND {tc} < {sql_ts(prev + 1)})")
                if d is not None:
                    start = prev = d
            preds.append(" OR ".join(runs))
        return preds
    per_day = -(-n // len(days))
    preds = []
    for d in days:
        edges = [d * DAY_US + DAY_US * i // per_day for i in range(per_day + 1)]
        for a, b in zip(edges, edges[1:]):
            preds.append(f"{tc} >= {sql_ts_us(a)} AND {tc} < {sql_ts_us(b)}")
    return preds


# ----------------------------------------------------------------------------------------------
# The lake side
# ----------------------------------------------------------------------------------------------

def lake_location(lake, delta_path):
    scheme = "wasbs" if lake.https else "wasb"
    return f"{scheme}://{lake.container}@{lake.authority}/{delta_path.strip('/')}"


def configure_lake(conf, lake):
    """The storage key and WASB's settings in a Hadoop configuration (the SparkContext's, which
    the tasks get with their work, or the log reader's), never in a Spark property of the
    submission."""
    conf.set(f"fs.azure.account.key.{lake.authority}", lake.key)
    for k, v in WASB_SETTINGS.items():
        conf.set(k, v)


class LakeLog:
    """A Delta table's `_delta_log` read through Hadoop's FileSystem on the driver JVM, without
    a SparkContext: the comparison of a run with nothing to change costs a listing and a few
    small reads, not a Spark job.

    The lake's side of the comparison comes from the log: rows per day are the numRecords of
    the live files (exact), and the checksums are those the export that last wrote a day
    computed from the very rows it wrote (the `summary` in its commit's userMetadata). A day
    that another writer touched since, or whose live rows differ from that summary, is
    unknown: it is compared as different and rewritten."""

    def __init__(self, jvm, lake, uri):
        self.jvm, self.uri = jvm, uri
        conf = jvm.org.apache.hadoop.conf.Configuration()
        configure_lake(conf, lake)
        self.root = jvm.org.apache.hadoop.fs.Path(uri)
        self.log_dir = jvm.org.apache.hadoop.fs.Path(uri + "/_delta_log")
        self.fs = self.root.getFileSystem(conf)

    def versions(self):
        """Versions of the JSON commits, sorted; None when there is no table (and nothing
        else) at the location; an error when something that is not a Delta table is there."""
        if not self.fs.exists(self.log_dir):
            if self.fs.exists(self.root) and len(self.fs.listStatus(self.root)) > 0:
                raise JobError(f"{self.uri} holds files but is not a Delta table (no _delta_log); "
                               "move them away or export to another delta_path")
            return None
        names = [str(st.getPath().getName()) for st in self.fs.listStatus(self.log_dir)]
        versions = sorted(int(n[:-5]) for n in names if re.fullmatch(r"\d{20}\.json", n))
        if not versions:
            raise JobError(f"{self.uri}/_delta_log holds no commit: not a Delta table; move it "
                           "away or export to another delta_path")
        return versions

    def commit(self, version):
        """The actions of one JSON commit."""
        p = self.jvm.org.apache.hadoop.fs.Path(self.log_dir, f"{version:020d}.json")
        stream = self.fs.open(p)
        try:
            text = str(self.jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
        finally:
            stream.close()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def state(self, table):
        """(version, partition columns, {day: (rows, ts_sum, [sums]) or UNKNOWN}) of the current
        version, or None when there is no table. `complete` is False (and the days are not
        known) when early commits survive only in a checkpoint."""
        versions = self.versions()
        if versions is None:
            return None
        version = versions[-1]
        if versions != list(range(version + 1)):
            return {"version": version, "partition_columns": None, "days": None}
        live, day_meta, partition_columns = {}, {}, None
        for v in versions:
            actions = self.commit(v)
            touched, summary = set(), None
            for a in actions:
                if "metaData" in a:
                    partition_columns = list(a["metaData"].get("partitionColumns") or [])
                elif "add" in a:
                    add = a["add"]
                    day = partition_day(add.get("partitionValues") or {})
                    rows = None
                    try:
                        rows = json.loads(add.get("stats") or "{}").get("numRecords")
                    except ValueError:
                        pass
                    live[add["path"]] = (day, rows)
                    touched.add(day)
                elif "remove" in a:
                    gone = live.pop(a["remove"]["path"], None)
                    touched.add(gone[0] if gone else
                                partition_day(a["remove"].get("partitionValues") or {}))
                elif "commitInfo" in a:
                    summary = export_meta(a["commitInfo"], table).get("summary")
            for day in touched:
                day_meta[day] = UNKNOWN
            for key, figures in (summary or {}).items():
                day_meta[int(key)] = (int(figures[0]), int(figures[1]), list(figures[2]))
        rows = {}
        for day, n in live.values():
            rows[day] = None if n is None or rows.get(day, 0) is None else rows.get(day, 0) + n
        days = {}
        for day, n in rows.items():
            meta = day_meta.get(day, UNKNOWN)
            days[day] = meta if day is not None and meta is not UNKNOWN and meta[0] == n else UNKNOWN
        return {"version": version, "partition_columns": partition_columns, "days": days}

    def data_files(self):
        """Parquet files below the table's folder (live or not)."""
        it, n = self.fs.listFiles(self.root, True), 0
        while it.hasNext():
            p = it.next().getPath()
            if str(p.getName()).endswith(".parquet") and "/_delta_log/" not in str(p.toString()):
                n += 1
        return n

    def find_commit(self, after, run_id, table):
        """This run's commit among the versions after `after`: (version, timestamp in s,
        operationMetrics); a concurrent export may have committed right after it."""
        for v in reversed([v for v in (self.versions() or []) if after is None or v > after]):
            for a in self.commit(v):
                info = a.get("commitInfo")
                if info and export_meta(info, table).get("run") == run_id:
                    return {"version": v, "timestamp": info.get("timestamp", 0) / 1000.0,
                            "metrics": dict(info.get("operationMetrics") or {})}
        return None


# A day whose lake figures cannot be told from the log (compared as different).
UNKNOWN = object()


def partition_day(values):
    try:
        return epoch_day(dt.datetime(int(values["year"]), int(values["month"]), int(values["day"]),
                                     tzinfo=dt.timezone.utc))
    except (KeyError, TypeError, ValueError):
        return None


def export_meta(commit_info, table):
    """The `labctl.export` user metadata of a commit of `table`, else {}."""
    try:
        meta = json.loads(commit_info.get("userMetadata") or "{}").get("labctl.export") or {}
    except (ValueError, AttributeError):
        return {}
    return meta if meta.get("table") == table else {}


def day_figures(df, time_column, sums):
    """The figures Db.day_summary gives, of a DataFrame that has the partition columns:
    {day: (rows, sum of epoch microseconds, [sum of each checksum column])}."""
    from pyspark.sql import functions as F

    aggs = [F.count(F.lit(1)).alias("n"),
            F.sum(F.unix_micros(F.col(time_column)).cast("decimal(38,0)")).alias("ts")]
    aggs += [F.sum(F.col(c).cast("double")).alias(f"s{i}") for i, c in enumerate(sums)]
    out = {}
    for r in df.groupBy("year", "month", "day").agg(*aggs).collect():
        day = epoch_day(dt.datetime(r["year"], r["month"], r["day"], tzinfo=dt.timezone.utc))
        out[day] = (r["n"], int(r["ts"] or 0), [r[f"s{i}"] for i in range(len(sums))])
    return out


def lake_summary(spark, uri, time_column, sums, lo_day, hi_day):
    """Day figures of the Delta table's current version read from its data: the way when the
    log cannot tell them (its early commits only in a checkpoint)."""
    from pyspark.sql import functions as F

    df = spark.read.format("delta").load(uri)
    date = F.make_date(F.col("year"), F.col("month"), F.col("day"))
    if lo_day is not None:
        df = df.where(date >= F.lit(day_date(lo_day)))
    if hi_day is not None:
        df = df.where(date < F.lit(day_date(hi_day)))
    return day_figures(df, time_column, sums)


def same(db, lake):
    if lake is None or lake is UNKNOWN or db[0] != lake[0] or db[1] != lake[1]:
        return False
    for a, b in zip(db[2], lake[2]):
        if a is None or b is None:
            if a != b:
                return False
        elif abs(a - b) > SUM_TOLERANCE * max(1.0, abs(a), abs(b)):
            return False
    return True


def replace_where(days):
    """Delta predicate over the partition columns selecting exactly `days`."""
    by_month = {}
    for d in days:
        x = day_date(d)
        by_month.setdefault((x.year, x.month), []).append(x.day)
    return " OR ".join(f"(year = {y} AND month = {m} AND day IN ({', '.join(map(str, ds))}))"
                       for (y, m), ds in sorted(by_month.items()))


# ----------------------------------------------------------------------------------------------
# One table
# ----------------------------------------------------------------------------------------------

def in_range(day, lo_day, hi_day):
    return (lo_day is None or day >= lo_day) and (hi_day is None or day < hi_day)


@dataclass(frozen=True)
class ExportPlan:
    """One comparison of a table's days, database against lake, and the write it calls for.
    Figures are {day: (rows, sum of epoch microseconds, [sum of each checksum column])}; the
    lake's figures of a day may be UNKNOWN instead."""
    table: TableConfig
    uri: str
    lo_day: int | None  # the compared days: [lo_day, hi_day), None = open
    hi_day: int | None
    # When the comparison began: `labctl verify` expects in the lake every row stamped (a little)
    # before this instant.
    as_of: str
    version: int | None  # the lake's version compared; None: no table yet
    db_days: dict
    lake_days: dict
    lake_compared_from: str  # "log", or "data" when early commits survive only in a checkpoint
    # To rewrite, sorted: the days the database has rows of and the lake differs on, lacks or
    # cannot tell (UNKNOWN). Days only in the lake are not among them: it may be the only copy.
    days: tuple[int, ...]
    replace_where: str  # Delta's predicate selecting exactly `days`
    seconds_db: float
    seconds_lake: float

    @property
    def days_compared(self):
        return len(set(self.db_days) | set(self.lake_days))

    @property
    def days_only_in_lake(self):
        return len(set(self.lake_days) - set(self.db_days))

    @property
    def days_unknown(self):
        return [d for d in self.days if self.lake_days.get(d) is UNKNOWN]

    @property
    def rows_expected(self):
        return sum(self.db_days[d][0] for d in self.days)

    def lake_rows(self, day):
        """The lake's rows of a day: 0 when it has none, None when they cannot be told."""
        figures = self.lake_days.get(day)
        return None if figures is UNKNOWN else figures[0] if day in self.lake_days else 0

    @property
    def differences(self):
        return [{"day": day_iso(d), "database_rows": self.db_days[d][0],
                 "lake_rows": self.lake_rows(d)} for d in self.days[:DIFFERENCES_SHOWN]]


def lake_days(session, lake, table, uri, lake_log, lo_day, hi_day):
    """(version or None, {day: figures or UNKNOWN} in the range, "log" or "data") of the Delta
    table's current version."""
    try:
        state = lake_log().state(table.name)
        if state is not None and state["partition_columns"] not in (None, PARTITION_COLUMNS):
            raise JobError(f"{uri} is partitioned by {state['partition_columns']}, expected "
                           f"{PARTITION_COLUMNS}")
        if state is None:
            return None, {}, "log"
        if state["days"] is None:
            return state["version"], lake_summary(session(), uri, table.time_column,
                                                  table.checksum_columns, lo_day, hi_day), "data"
        return state["version"], {d: f for d, f in state["days"].items()
                                  if d is not None and in_range(d, lo_day, hi_day)}, "log"
    except JobError:
        raise
    except Exception as exc:  # noqa: BLE001
        kind, detail = failure_kind(exc)
        what = ("lake storage unreachable or unreadable" if kind == "lake"
                else "reading the lake failed")
        raise JobError(f"{table.name}: {what} at {lake.endpoint} (container {lake.container}, "
                       f"table {uri}): {detail}; nothing committed") from exc


def plan_export(cfg, table, uri, db, session, lake_log):
    """Compares the table's days in the database (in `db`'s snapshot), then in the lake. Writes
    nothing; Spark is started only when the lake's log cannot tell its figures."""
    lo_day, hi_day = cfg.lo_day, cfg.hi_day
    t = time.time()
    as_of = dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds")
    db_days = db.day_summary(table.name, table.time_column, table.checksum_columns, lo_day,
                             hi_day)
    seconds_db = round(time.time() - t, 3)
    t = time.time()
    version, lake_figs, source = lake_days(session, cfg.lake, table, uri, lake_log, lo_day,
                                           hi_day)
    seconds_lake = round(time.time() - t, 3)
    days = tuple(sorted(d for d in db_days if not same(db_days[d], lake_figs.get(d))))
    return ExportPlan(table=table, uri=uri, lo_day=lo_day, hi_day=hi_day, as_of=as_of,
                      version=version, db_days=db_days, lake_days=lake_figs,
                      lake_compared_from=source, days=days, replace_where=replace_where(days),
                      seconds_db=seconds_db, seconds_lake=seconds_lake)


def snapshot_import(snapshot):
    """The JDBC reads' session statement: their transaction takes the comparison's snapshot.
    Spark's PostgreSQL dialect turns autocommit off before it (a cursor needs a transaction);
    should that ever change, SET TRANSACTION would only warn, so the block fails the read
    instead of letting it see another snapshot."""
    if not SNAPSHOT_ID.fullmatch(snapshot or ""):  # checked where it goes into SQL
        raise JobError(f"the database exported a snapshot id of unknown form: {snapshot!r}")
    return ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; "
            f"SET TRANSACTION SNAPSHOT '{snapshot}'; "
            "DO $$ BEGIN IF current_setting('transaction_isolation') <> 'repeatable read' THEN "
            "RAISE EXCEPTION 'the read is not in the comparison''s snapshot'; END IF; END $$")


def read_days(spark, cfg, plan, snapshot):
    """(DataFrame, Observation of its rows) of the plan's days read over JDBC in parallel, in
    the comparison's snapshot: the rows whose figures the comparison computed. Lazy: the write
    reads them as it writes them, one pass."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    table = plan.table
    props = {"user": cfg.db_user, "password": cfg.db_password,
             "driver": "org.postgresql.Driver", "fetchsize": "20000",
             "sessionInitStatement": snapshot_import(snapshot),
             # rows in PostgreSQL's binary format from the first query on, not only after five
             # executions of a statement: no parsing of numbers and timestamps from text (the
             # read took 25 % less; a prepareThreshold in the URL wins over this)
             "prepareThreshold": "-1"}
    preds = jdbc_predicates(table.time_column, plan.days, plan.db_days, cfg.partitions)
    df = spark.read.jdbc(cfg.jdbc_url, quote_ident(table.name), predicates=preds,
                         properties=props)
    clash = [c for c in df.columns if c in PARTITION_COLUMNS]
    if clash:
        raise JobError(f"{table.name}: column {clash[0]} clashes with a partition column")
    tcol = F.col(table.time_column)
    seen = Observation()
    df = df.select("*", F.year(tcol).alias("year"), F.month(tcol).alias("month"),
                   F.dayofmonth(tcol).alias("day"))
    return df.observe(seen, F.count(F.lit(1)).alias("rows")), seen


def read_only(df, plan):
    """Reads every row and column of the plan's days and keeps nothing: the read of an export
    without its write (a benchmark's baseline)."""
    try:
        df.write.format("noop").mode("overwrite").save()
    except Exception as exc:  # noqa: BLE001
        raise JobError(f"{plan.table.name}: reading {len(plan.days)} days over JDBC failed: "
                       f"{failure_kind(exc)[1]} (nothing committed, {plan.uri} left at version "
                       f"{plan.version})") from exc


def commit_metadata(run_id, plan, written):
    """The commit's userMetadata: how later exports (LakeLog.state), `labctl verify` and this
    run (find_commit) know what it wrote."""
    return json.dumps({"labctl.export": {
        "run": run_id, "table": plan.table.name, "days": len(plan.days),
        "rows": sum(f[0] for f in written.values()), "as_of": plan.as_of,
        "summary": {str(d): [f[0], str(f[1]), f[2]] for d, f in written.items()}}},
        separators=(",", ":"))


def write_days(df, plan, meta):
    """One Delta transaction: the plan's days replaced (or the table created with them)."""
    # replaceWhere also when the table is new: should another export create it meanwhile, this
    # one replaces those days instead of appending to them
    (df.write.format("delta").partitionBy(*PARTITION_COLUMNS)
     .option("userMetadata", meta).mode("overwrite")
     # statistics (min, max, nulls) of the time column only, for a table this creates: every
     # file holds all machines and sensors of its day, so those of the other columns skip no
     # file, and collecting them per row cost 16 % of the tasks' time (numRecords, which the
     # comparison reads, is always collected)
     .option("delta.dataSkippingStatsColumns", quote_ident_spark(plan.table.time_column))
     .option("replaceWhere", plan.replace_where)
     .save(plan.uri))


def write_error(exc, plan):
    kind, detail = failure_kind(exc)
    name = plan.table.name
    what = {"lake": "writing to the lake", "jdbc": f"reading {name} over JDBC"}
    if is_conflict(exc):
        what["spark"] = f"conflicting with concurrent exports {ATTEMPTS} times"
    return JobError(f"export of {name} failed, {what.get(kind, 'Spark job')}: {detail} "
                    f"(nothing committed, {plan.uri} left at version {plan.version})")


def find_commit(log_reader, plan, run_id):
    commit = log_reader.find_commit(plan.version, run_id, plan.table.name)
    if commit is None:
        raise JobError(f"{plan.table.name}: the write to {plan.uri} returned, but its commit is "
                       "not in the table's log")
    return commit


def new_result(cfg, table, uri):
    """A table's entry of the result before its comparison, keys in their reported order."""
    phases = {"compare_db": 0.0, "compare_lake": 0.0, "spark_start": 0.0, "read": 0.0,
              "write": 0.0, "commit": 0.0}
    return {"name": table.name, "delta_uri": uri, "committed": False, "rows_read": 0,
            "rows_written": 0, "files": 0, "files_removed": 0, "delta_version": None,
            "previous_version": None, "partitions": [], "days_compared": 0,
            "days_rewritten": 0, "days_only_in_lake": 0, "days_unknown_in_lake": 0,
            "differences": [], "attempts": 0, "lake_compared_from": "log",
            "from": iso(floor_day(cfg.range_from)) if cfg.range_from else None,
            "to": iso(ceil_day(cfg.range_to)) if cfg.range_to else None, "phases": phases}


def record_plan(result, plan, attempt, session):
    """The latest comparison's figures; its times add to those of earlier attempts."""
    phases = result["phases"]
    phases["compare_db"] += plan.seconds_db
    phases["compare_lake"] += plan.seconds_lake
    if plan.lake_compared_from == "data":
        # kept once set: the compare_lake time includes that reading
        result["lake_compared_from"] = "data"
        phases["spark_start"] = session.seconds
    if attempt == 1:
        result["previous_version"] = plan.version
    result["delta_version"] = plan.version
    result["days_compared"] = plan.days_compared
    result["days_rewritten"] = len(plan.days)
    result["days_only_in_lake"] = plan.days_only_in_lake
    result["days_unknown_in_lake"] = len(plan.days_unknown)
    result["differences"] = plan.differences
    result["partitions"] = [day_key(d) for d in plan.days]


def record_commit(result, plan, commit, t_write, t_end):
    phases = result["phases"]
    # the commit's own timestamp splits the write (tasks) from the commit (driver)
    commit_secs = max(0.0, min(t_end - t_write, t_end - commit["timestamp"]))
    phases["write"] += round(t_end - t_write - commit_secs, 3)
    phases["commit"] = round(commit_secs, 3)
    metrics = commit["metrics"]
    result.update(committed=True, delta_version=commit["version"],
                  rows_written=int(metrics.get("numOutputRows", 0)),
                  files=int(metrics.get("numFiles", metrics.get("numAddedFiles", 0))),
                  files_removed=int(metrics.get("numRemovedFiles", 0)))
    # the comparison's count (the database may have grown since)
    result["rows_expected"] = plan.rows_expected


def export_table(session, cfg, table, run_id):
    """Compares one table's days and rewrites those that differ, comparing again when a
    concurrent export commits first. `session()` starts Spark (once): a run with nothing to
    change never needs it."""
    name = table.name
    uri = lake_location(cfg.lake, table.delta_path)
    result = new_result(cfg, table, uri)
    t_table = time.time()
    jvm = SparkContext_jvm()
    readers = []

    def lake_log():
        # opened on first use, within the comparison's error handling (an unreachable lake is
        # reported as such), then kept for the attempts that follow
        if not readers:
            readers.append(LakeLog(jvm, cfg.lake, uri))
        return readers[0]

    for attempt in range(1, ATTEMPTS + 1):
        result["attempts"] = attempt
        db = Db(jvm, cfg)
        try:
            done = export_attempt(session, cfg, table, db, result, attempt, run_id, lake_log)
        finally:
            db.close()  # ends the snapshot's transaction: every read has finished
        if done:
            return finish(result, t_table)
    raise AssertionError("unreachable")


def export_attempt(session, cfg, table, db, result, attempt, run_id, lake_log):
    """One comparison and, if days differ, their rewrite in one Delta transaction. True when
    the table's result is final; False when a concurrent export committed first and the
    comparison must be made again."""
    name, uri, phases = result["name"], result["delta_uri"], result["phases"]
    snapshot = db.export_snapshot()
    plan = plan_export(cfg, table, uri, db, session, lake_log)
    record_plan(result, plan, attempt, session)
    log(f"{name}: {len(plan.db_days)} days in the database, {len(plan.lake_days)} in the "
        f"lake (version {plan.version}), {len(plan.days)} to rewrite")
    if not plan.days:
        result["message"] = (f"{name}: the lake equals the database on all "
                             f"{result['days_compared']} days compared; nothing written, "
                             f"{uri} left at version {plan.version}")
        return True

    spark = session()
    phases["spark_start"] = session.seconds
    df, seen = read_days(spark, cfg, plan, snapshot)
    if cfg.read_only:
        t = time.time()
        read_only(df, plan)
        phases["read"] += round(time.time() - t, 3)
        result["rows_read"] = seen.get["rows"]
        result["message"] = (f"{name}: read {result['rows_read']} rows of {len(plan.days)} "
                             f"differing days (read_only: nothing written, {uri} left at "
                             f"version {plan.version})")
        return True

    # The rows are read from the comparison's snapshot: its figures are those of the rows
    # written, recorded with the commit.
    written = {d: plan.db_days[d] for d in plan.days}
    t = time.time()
    try:
        write_days(df, plan, commit_metadata(run_id, plan, written))
    except Exception as exc:  # noqa: BLE001
        if not (is_conflict(exc) and attempt < ATTEMPTS):
            raise write_error(exc, plan) from exc
        log(f"{name}: a concurrent export committed first ({failure_kind(exc)[1]}); "
            f"comparing again (attempt {attempt + 1} of {ATTEMPTS})")
        phases["write"] += round(time.time() - t, 3)
        return False
    t_end = time.time()
    result["rows_read"] = seen.get["rows"]
    commit = find_commit(lake_log(), plan, run_id)
    record_commit(result, plan, commit, t, t_end)
    counts = {result["rows_written"], result["rows_read"], plan.rows_expected}
    if len(counts) != 1:
        raise JobError(f"{name}: committed version {commit['version']} with "
                       f"{result['rows_written']} rows; {result['rows_read']} were read and the "
                       f"comparison's snapshot holds {plan.rows_expected}; the next export "
                       "compares and rewrites those days")
    log(f"{name}: committed version {commit['version']}: {result['rows_written']} rows of "
        f"{len(plan.days)} days, {result['files']} files added, {result['files_removed']} "
        "removed")
    result["message"] = (f"{name}: {result['rows_written']} rows of {len(plan.days)} "
                         f"differing days (of {result['days_compared']} compared) committed "
                         f"as version {commit['version']}")
    return True


def vacuum_table(session, cfg, table):
    """VACUUM with the retention asked for (Delta's default: 7 days). Delta refuses less than
    its check allows unless the user turned the check off for this run."""
    uri = lake_location(cfg.lake, table.delta_path)
    t = time.time()
    log_reader = LakeLog(SparkContext_jvm(), cfg.lake, uri)
    if log_reader.versions() is None:
        return finish({"name": table.name, "delta_uri": uri, "vacuumed": False,
                       "files_deleted": 0, "message": f"{table.name}: no Delta table at {uri}"}, t)
    spark = session()
    hours = cfg.retain_hours
    sql = f"VACUUM delta.`{uri}`" + (f" RETAIN {float(hours)} HOURS" if hours is not None else "")
    before = log_reader.data_files()
    try:
        spark.sql(sql).collect()
    except Exception as exc:  # noqa: BLE001
        raise JobError(f"vacuum of {uri} failed: {failure_kind(exc)[1]}") from exc
    after = log_reader.data_files()
    kept = hours if hours is not None else 168
    return finish({"name": table.name, "delta_uri": uri, "vacuumed": True,
                   "retain_hours": kept, "files_deleted": before - after, "files_left": after,
                   "message": f"{table.name}: {before - after} data files deleted, {after} left "
                              f"({uri}, keeping {kept:g} hours of history)"}, t)


def finish(result, t0):
    result["seconds"] = round(time.time() - t0, 3)
    log(result["message"])
    return result


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------

def SparkContext_jvm():  # noqa: N802  (the py4j view of the driver JVM)
    from pyspark import SparkContext
    return SparkContext._jvm


def driver_jvm_start():
    """When the driver JVM started, in epoch milliseconds (the run's seconds count from it)."""
    from pyspark import SparkContext

    SparkContext._ensure_initialized()  # the driver JVM's py4j gateway, no SparkContext yet
    jvm = SparkContext._jvm
    try:
        return jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getStartTime()
    except Exception:  # noqa: BLE001
        return int(T0 * 1000)


def spark_conf(cfg):
    """The submission's spark.* properties, completed with what this job needs."""
    from pyspark import SparkConf

    conf = SparkConf()  # spark.* from the submission; the app name only as a fallback
    if not conf.contains("spark.app.name"):
        conf.setAppName("labctl-timescale-to-deltalake")
    threads = conf.get("spark.labctl.driverTaskThreads", None)
    if threads:  # one worker: the tasks run in this driver (cores granted to it by labctl),
        # with a failed task retried like on executors (spark.task.maxFailures, default 4)
        conf.setMaster(f"local[{int(threads)},{conf.get('spark.task.maxFailures', '4')}]")
    # A lab's tables are small and its cluster a few cores: Spark's and Delta's defaults (200
    # shuffle partitions, 50 for Delta's state, 10000 listing tasks in VACUUM) cost minutes
    # of empty tasks on 2 cores (measured: VACUUM of a 5-file table 120 s).
    slots = int(threads or conf.get("spark.cores.max", "2"))
    for key, value in (("spark.sql.shuffle.partitions", slots),
                       ("spark.databricks.delta.snapshotPartitions", slots),
                       ("spark.sql.sources.parallelPartitionDiscovery.parallelism", 2 * slots)):
        if not conf.contains(key):
            conf.set(key, str(value))
    conf.set("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
    conf.set("spark.sql.catalog.spark_catalog",
             "org.apache.spark.sql.delta.catalog.DeltaCatalog")
    # INT96 is Spark's default; Delta's readers (and independent ones) prefer microseconds
    conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    # no VACUUM START/END commits in the log: the history shows exports only
    conf.set("spark.databricks.delta.vacuum.logging.enabled", "false")
    if cfg.vacuum and cfg.retain_hours is not None and float(cfg.retain_hours) < 168:
        # asked for explicitly (`labctl lake vacuum --retain-hours N`)
        conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    return conf


class LazySpark:
    """The SparkSession, started on the first call: a run with nothing to change needs none.
    Its start-up times go into the result's `startup`, and into `seconds` for the tables'
    spark_start phase."""

    def __init__(self, cfg, startup):
        self.cfg, self.startup = cfg, startup
        self.spark = None
        self.seconds = 0.0

    def __call__(self):
        if self.spark is None:
            self.spark = self._start()
        return self.spark

    def _start(self):
        from pyspark import SparkContext
        from pyspark.sql import SparkSession

        t = time.time()
        sc = SparkContext.getOrCreate(spark_conf(self.cfg))
        # the key reaches the tasks with their work, never as a Spark property
        configure_lake(sc._jsc.hadoopConfiguration(), self.cfg.lake)
        self.startup["spark_context"] = round(time.time() - t, 3)
        t2 = time.time()
        spark = SparkSession(sc)
        self.startup["spark_session"] = round(time.time() - t2, 3)
        self.seconds = round(time.time() - t, 3)
        log(f"Spark ready: {self.startup}")
        return spark

    def stop(self):
        if self.spark is not None:
            self.spark.stop()


def run_tables(cfg, session):
    """Each table's result, one after the other (the first failure ends the run)."""
    run_id = uuid.uuid4().hex
    results = []
    try:
        for table in cfg.tables:
            if cfg.vacuum:
                results.append(vacuum_table(session, cfg, table))
            else:
                results.append(export_table(session, cfg, table, run_id))
    finally:
        session.stop()
    return results


def vacuum_summary(results, startup):
    return {"vacuumed": [r["name"] for r in results if r["vacuumed"]], "tables": results,
            "message": "; ".join(r["message"] for r in results), "startup": startup}


def export_summary(cfg, results, startup):
    """The tables' results summed and merged; delta_version is the first table's."""
    days = sorted({tuple(p) for r in results for p in r["partitions"]},
                  key=lambda k: tuple(int(x) for x in k))
    return {
        "rows_read": sum(r["rows_read"] for r in results),
        "rows_written": sum(r["rows_written"] for r in results),
        "files": sum(r["files"] for r in results),
        "files_removed": sum(r["files_removed"] for r in results),
        "delta_version": results[0]["delta_version"],
        "committed": any(r["committed"] for r in results),
        "partitions": [list(d) for d in days],
        "days_compared": sum(r["days_compared"] for r in results),
        "days_rewritten": sum(r["days_rewritten"] for r in results),
        "tables": results,
        "message": "; ".join(r["message"] for r in results),
        "startup": startup,
        "read_only": cfg.read_only,
    }


def main(cfg):
    """Runs the export (or the vacuum) of a loaded config; returns the summary, also printed as
    the LABCTL_RESULT line."""
    jvm_start = driver_jvm_start()
    startup = {"jvm_to_python": round(T0 - jvm_start / 1000, 3)}
    session = LazySpark(cfg, startup)
    results = run_tables(cfg, session)
    if cfg.vacuum:
        summary = vacuum_summary(results, startup)
    else:
        summary = export_summary(cfg, results, startup)
    summary["seconds"] = round(time.time() - jvm_start / 1000, 3)
    print(PREFIX_RESULT + json.dumps(summary, separators=(",", ":")), flush=True)
    return summary


def report_error(line):
    """The LABCTL_ERROR line on stdout, and on stderr unless both are the same pipe (a Spark
    driver's PythonRunner merges the Python process' stderr into its stdout)."""
    print(line, flush=True)
    try:
        merged = os.path.sameopenfile(1, 2)
    except OSError:
        merged = False
    if not merged:
        print(line, file=sys.stderr, flush=True)


def error_result(err):
    tail = traceback.format_exc().rstrip("\n").splitlines()[-TRACEBACK_TAIL_LINES:]
    return {"error": f"{type(err).__name__}: {one_line(err, limit=1000)}",
            "traceback_tail": "\n".join(tail)}


def report_failure(err, line, config):
    """The error line, and the error to result_url when the config was read; called while the
    error is handled (error_result takes its traceback)."""
    report_error(line)
    if config and config.result_url:
        put_result(config.result_url, error_result(err))


if __name__ == "__main__":
    config = None
    try:
        config = load_config(sys.argv)  # config/range errors fail before Spark starts
        outcome = main(config)
        if config.result_url:
            put_result(config.result_url, outcome)
    except JobError as err:
        report_failure(err, PREFIX_ERROR + one_line(err, limit=1000), config)
        raise
    except Exception as err:  # noqa: BLE001
        report_failure(err, PREFIX_ERROR + f"unexpected {type(err).__name__}: "
                       f"{one_line(err, limit=600)}", config)
        raise
