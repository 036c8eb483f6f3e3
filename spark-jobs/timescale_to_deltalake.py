"""Batch export: TimescaleDB (JDBC) -> Delta Lake on Azure Blob storage (Azurite), rendered and
submitted by `labctl` (config from templates/spark/export.json.tera).

Usage (as the Python application of a Spark driver):
    timescale_to_deltalake.py '<config JSON>'
    timescale_to_deltalake.py @/path/to/config.json
    timescale_to_deltalake.py @https://account.blob.example/container/config.json?<SAS>
  A config fetched over http(s) (how labctl ships it: a SAS URL with read and delete permission
  of a blob in the lake) is deleted right after it is read, with a DELETE on the same URL: it
  holds the database password. A failed deletion is a warning on stderr, not a failure.

Config (all keys required unless marked optional):
    {
      "jdbc_url":    "jdbc:postgresql://timescaledb:5432/iiot",
      "db_user":     "lab",
      "db_password": "...",
      "tables": [                                   # exported one after the other
        {"name": "machine_sensors",   "time_column": "timestamp",    "delta_path": "machine_sensors"},
        {"name": "sensor_aggregates", "time_column": "window_start", "delta_path": "sensor_aggregates"}
      ],
      "range": {"from": null, "to": null},          # ISO-8601 strings (UTC; "Z", an offset, or none
                                                    # = UTC; a bare date = midnight UTC) or null
      "partitions": 4,                              # JDBC read partitions (= Spark tasks), >= 1
      "read_only": false,                           # optional, default false: read the range over
                                                    # JDBC into the tasks and count the rows; write
                                                    # and commit nothing (a benchmark's baseline)
      "result_url": null,                           # optional: a URL (a blob SAS with create and
                                                    # write permission) the job PUTs its result to
                                                    # as a block blob, see Output
      "lake": {
        "account":   "devstoreaccount1",
        "key":       "...",                         # shared key (base64)
        "endpoint":  "http://azurite:10000/devstoreaccount1",   # optional; null = public Azure
        "container": "lake",
        "allow_http": true                          # optional, default false
      }
    }
    The Delta table of each entry is az://<container>/<delta_path>.

Range semantics (per table; the time column is the partitioning instant):
  * range.from given ("replace" mode): the range is widened to whole UTC days,
    [midnight(from), next midnight >= (to or now)), because a run replaces whole day partitions.
    All rows of those days are read, and the same Delta commit removes every file of those days
    that is in the table, so re-running a range never duplicates rows. If the database has no row
    in the range, nothing is committed (the lake keeps its data: it may be the only copy left).
  * range.from null ("incremental" mode): rows with time > the newest instant already in the Delta
    table (exact max of its time column; everything if the table does not exist) and
    time < (to or now - 60 s: readings younger than that may still be on their way through
    Flink). Appends only; a run without new rows exports 0 rows and commits nothing.
    (A row inserted later with a time older than that instant is not picked up incrementally;
    re-export its day with an explicit range.)

What it does: per table, min/max of the range are queried on the driver (no Spark job); the range
is read over JDBC in `partitions` parallel slices of the time column (slice edges on UTC midnights
when the range spans at least that many days); each Spark task writes one Parquet file per UTC day
of its slice to year=Y/month=M/day=D/ in the table location and returns the add-file metadata
(path, size, partition values, stats); the driver commits all files of the table in ONE Delta
transaction (delta-rs create_write_transaction, or create_table_with_add_actions for a new table),
together with the remove actions of replaced days. Then a vacuum (retention 0 for the files this
commit removed: deleted at once, so storage does not grow with re-runs) also deletes data files no
version references (files of failed runs, never committed) once they are 15 minutes old; younger
ones may belong to an export running at the same time. One run = one new table version, or none
when there is nothing to export. A failure before the commit leaves the table at its version.

Table schema: the source columns (timestamps as timestamp[us, UTC], i.e. Delta `timestamp`;
double stays double, text -> string, bigint -> long, integer -> integer) plus partition columns
year, month, day (integer, from the UTC time). Parquet files hold the source columns only.

Output: on success one stdout line
    LABCTL_RESULT {"rows_read":..,"rows_written":..,"files":..,"files_removed":..,
                   "delta_version":..,"committed":..,"partitions":[["2026","11","17"],..],
                   "tables":[..],"message":"..","startup":{..},"seconds":..}
  rows/files are summed and partitions (the days written) merged over the tables; delta_version
  is the first table's version after the run (unchanged when nothing was committed; null if the
  table does not exist); committed tells whether any table got a new version; seconds counts from
  the driver JVM's start. Each entry of "tables" has name, delta_uri, mode (replace|incremental),
  from, to (the effective range, ISO), committed, rows_read, rows_written, files, files_removed,
  vacuumed, orphans_kept, delta_version, previous_version, partitions, message, phases (seconds
  per step) and seconds; "startup" holds the driver's start-up steps (seconds). When no table has
  rows to export, no Spark application is started at all (only the driver's JVM and Python).
Spark property spark.labctl.driverTaskThreads=N (optional, set by labctl when the cluster has one
worker and the driver was granted its cores): the tasks run inside the driver with N threads
(local[N,maxFailures]) instead of on executors.
Submission needs the PostgreSQL JDBC driver in spark.jars (also used on the driver, before the
SparkContext exists) and python with pyarrow + deltalake on driver and executors.
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

T0 = time.time()
PREFIX_RESULT = "LABCTL_RESULT "
PREFIX_ERROR = "LABCTL_ERROR "
PARTITION_COLUMNS = ["year", "month", "day"]
DAY_US = 86_400_000_000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# object_store client settings: fail within seconds instead of minutes when storage is down.
STORAGE_CLIENT_OPTIONS = {"max_retries": "3", "retry_timeout": "20s", "connect_timeout": "5s",
                          "timeout": "120s"}
# An incremental run without `to` exports readings older than this: younger ones may still be
# on their way through Flink, and the next run starts above the newest exported instant.
SETTLE_SECONDS = 60
# Unreferenced data files younger than this may belong to an export still running: kept.
ORPHAN_GRACE_SECONDS = 15 * 60
# Fetching the config, deleting it, writing the result: each call is small.
HTTP_TIMEOUT_SECONDS = 30
# Blob service version of those calls (sent as x-ms-version).
BLOB_API_VERSION = "2021-08-06"
TRACEBACK_TAIL_LINES = 15


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


def load_config(argv):
    if len(argv) < 2 or not argv[1].strip():
        raise JobError("usage: timescale_to_deltalake.py '<config JSON>' | @<config file> | "
                       "@<http(s) URL>")
    arg = argv[1]
    if arg.startswith(("@http://", "@https://")):
        arg = fetch_config(arg[1:])
    elif arg.startswith("@"):
        try:
            with open(arg[1:], encoding="utf-8") as fh:
                arg = fh.read()
        except OSError as exc:
            raise JobError(f"cannot read config file {arg[1:]}: {exc.strerror}") from None
    try:
        cfg = json.loads(arg)
    except json.JSONDecodeError as exc:
        raise JobError(f"config is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise JobError("config must be a JSON object")
    for key in ("jdbc_url", "db_user", "db_password", "tables", "lake"):
        if key not in cfg:
            raise JobError(f"config key missing: {key}")
    tables = cfg["tables"]
    if not isinstance(tables, list) or not tables:
        raise JobError("config key tables must be a non-empty list")
    for t in tables:
        if not isinstance(t, dict) or not all(isinstance(t.get(k), str) and t.get(k)
                                              for k in ("name", "time_column", "delta_path")):
            raise JobError(f"each table needs string name, time_column, delta_path: {json.dumps(t)}")
    lake = cfg["lake"]
    for key in ("account", "key", "container"):
        if not isinstance(lake, dict) or not lake.get(key):
            raise JobError(f"config key missing: lake.{key}")
    rng = cfg.get("range") or {}
    if not isinstance(rng, dict):
        raise JobError("malformed range: range must be an object {\"from\":..,\"to\":..}")
    cfg["_from"] = parse_instant(rng.get("from"), "range.from")
    cfg["_to"] = parse_instant(rng.get("to"), "range.to")
    if cfg["_from"] is not None and cfg["_to"] is not None and cfg["_from"] >= cfg["_to"]:
        raise JobError(f"malformed range: from ({rng.get('from')}) must be before to ({rng.get('to')})")
    try:
        cfg["partitions"] = 4 if cfg.get("partitions") is None else int(cfg["partitions"])
    except (TypeError, ValueError):
        raise JobError(f"partitions must be an integer: {json.dumps(cfg.get('partitions'))}") from None
    if cfg["partitions"] < 1:
        raise JobError("partitions must be >= 1")
    cfg["read_only"] = cfg.get("read_only", False)
    if not isinstance(cfg["read_only"], bool):
        raise JobError(f"read_only must be true or false: {json.dumps(cfg['read_only'])}")
    result_url = cfg.get("result_url")
    if result_url is not None and not (isinstance(result_url, str)
                                       and result_url.startswith(("http://", "https://"))):
        raise JobError("result_url must be an http(s) URL or null")
    return cfg


def storage_options(lake):
    opts = {"account_name": lake["account"], "account_key": lake["key"]}
    if lake.get("endpoint"):
        opts["endpoint"] = lake["endpoint"]
    if str(lake.get("allow_http", False)).lower() in ("true", "1"):
        opts["allow_http"] = "true"
    opts.update(STORAGE_CLIENT_OPTIONS)
    return opts


def quote_ident(name):
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


# ----------------------------------------------------------------------------------------------
# Time helpers (all instants are aware UTC datetimes or int microseconds since the epoch)
# ----------------------------------------------------------------------------------------------

def to_us(instant):
    delta = instant - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us):
    return EPOCH + dt.timedelta(microseconds=us)


def iso(instant):
    return None if instant is None else instant.isoformat(timespec="microseconds").replace("+00:00", "Z")


def sql_ts(us):
    return "'" + from_us(us).isoformat(timespec="microseconds") + "'::timestamptz"


def floor_day(instant):
    return instant.replace(hour=0, minute=0, second=0, microsecond=0)


def ceil_day(instant):
    day = floor_day(instant)
    return day if day == instant else day + dt.timedelta(days=1)


def day_key(epoch_day):
    d = dt.date(1970, 1, 1) + dt.timedelta(days=epoch_day)
    return (str(d.year), str(d.month), str(d.day))


def ms_iso(us):
    """Delta stats timestamp format (millisecond precision, truncated like delta-rs/Spark)."""
    return from_us(us - us % 1000).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ----------------------------------------------------------------------------------------------
# Executor side: one Spark task = one JDBC slice -> one Parquet file per UTC day
# ----------------------------------------------------------------------------------------------

# Rows coming back from the tasks to the driver: one per Parquet file written (file_path set)
# and one per task with the number of rows it read (file_path null).
FILE_META_SCHEMA = ("task int, rows_read long, file_path string, size long, year string, "
                    "month string, day string, modification_time long, stats string, rows long, "
                    "read_seconds double, write_seconds double")


def make_partition_writer(table_uri, opts, time_column):
    """The function for DataFrame.mapInArrow: consumes one JDBC slice as Arrow record batches
    (Spark timestamps arrive as timestamp[us, tz=<session tz>], i.e. UTC instants), writes one
    Parquet file per UTC day into year=Y/month=M/day=D/ of the table location, and yields the
    add-file metadata. Nothing is committed here."""

    def write_partition(batches):
        import math

        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
        from deltalake.fs import DeltaStorageHandler
        from pyspark import TaskContext

        task = TaskContext.get().partitionId()
        t_read = time.time()
        per_day = {}  # epoch day -> [RecordBatch]
        schema = None
        rows_read = 0
        for batch in batches:
            if schema is None:  # timestamps relabelled as UTC (the instants are unchanged)
                schema = pa.schema([
                    pa.field(f.name, pa.timestamp("us", tz="UTC"), True)
                    if pa.types.is_timestamp(f.type) and f.type.tz is not None
                    else pa.field(f.name, f.type, True) for f in batch.schema])
            batch = pa.RecordBatch.from_arrays(
                [c.cast(schema.field(i).type) for i, c in enumerate(batch.columns)], schema=schema)
            rows_read += batch.num_rows
            micros = batch.column(time_column).cast(pa.int64())
            days = pc.divide(micros, DAY_US)  # integer division; times before 1970 do not occur
            for d in pc.unique(days).to_pylist():
                if d is not None:  # a NULL time has no day (and is outside any range anyway)
                    per_day.setdefault(d, []).append(batch.filter(pc.equal(days, d)))

        t_write = time.time()
        out = {k: [] for k in ("task", "rows_read", "file_path", "size", "year", "month", "day",
                               "modification_time", "stats", "rows", "read_seconds",
                               "write_seconds")}

        def emit(**kw):
            for k in out:
                out[k].append(kw.get(k))

        store = DeltaStorageHandler(table_uri, opts)._handler if per_day else None
        attempt = uuid.uuid4().hex
        for d, parts in sorted(per_day.items()):
            tbl = pa.Table.from_batches(parts, schema=schema).sort_by(time_column)
            y, m, dd = day_key(d)
            rel = f"year={y}/month={m}/day={dd}/part-{task:05d}-{attempt}-c000.snappy.parquet"
            sink = pa.BufferOutputStream()
            pq.write_table(tbl, sink, compression="snappy", row_group_size=1 << 20)
            buf = sink.getvalue()
            # delta-rs' object_store stream, called directly: through pyarrow's PyFileSystem the
            # write gets a pyarrow Buffer, which deltalake 1.6.6 rejects ("not an instance of bytes")
            stream = store.open_output_stream(rel, None)
            stream.write(buf.to_pybytes())
            stream.close()
            stats = {"numRecords": tbl.num_rows, "minValues": {}, "maxValues": {}, "nullCount": {}}
            for field in schema:
                col = tbl.column(field.name)
                stats["nullCount"][field.name] = col.null_count
                if col.null_count == tbl.num_rows:
                    continue
                if pa.types.is_timestamp(field.type):
                    micros = col.cast(pa.int64())
                    lo, hi = ms_iso(pc.min(micros).as_py()), ms_iso(pc.max(micros).as_py())
                elif (pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
                      or pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
                    mm = pc.min_max(col)
                    lo, hi = mm["min"].as_py(), mm["max"].as_py()
                    if isinstance(lo, float) and not (math.isfinite(lo) and math.isfinite(hi)):
                        continue
                    if isinstance(lo, str) and (len(lo) > 32 or len(hi) > 32):
                        continue
                else:
                    continue
                stats["minValues"][field.name] = lo
                stats["maxValues"][field.name] = hi
            emit(task=task, rows_read=0, file_path=rel, size=buf.size, year=y, month=m, day=dd,
                 modification_time=int(time.time() * 1000), stats=json.dumps(stats),
                 rows=tbl.num_rows)
        emit(task=task, rows_read=rows_read, rows=0, read_seconds=t_write - t_read,
             write_seconds=time.time() - t_write)
        yield pa.RecordBatch.from_pydict(out, schema=pa.schema([
            ("task", pa.int32()), ("rows_read", pa.int64()), ("file_path", pa.string()),
            ("size", pa.int64()), ("year", pa.string()), ("month", pa.string()),
            ("day", pa.string()), ("modification_time", pa.int64()), ("stats", pa.string()),
            ("rows", pa.int64()), ("read_seconds", pa.float64()),
            ("write_seconds", pa.float64())]))

    return write_partition


def make_partition_counter():
    """read_only mode: the same JDBC slice as Arrow record batches, counted and dropped."""

    def count_partition(batches):
        import pyarrow as pa
        from pyspark import TaskContext

        task = TaskContext.get().partitionId()
        t_read = time.time()
        rows_read = sum(batch.num_rows for batch in batches)
        yield pa.RecordBatch.from_pydict(
            {"task": [task], "rows_read": [rows_read], "file_path": [None], "size": [None],
             "year": [None], "month": [None], "day": [None], "modification_time": [None],
             "stats": [None], "rows": [0], "read_seconds": [time.time() - t_read],
             "write_seconds": [0.0]},
            schema=pa.schema([
                ("task", pa.int32()), ("rows_read", pa.int64()), ("file_path", pa.string()),
                ("size", pa.int64()), ("year", pa.string()), ("month", pa.string()),
                ("day", pa.string()), ("modification_time", pa.int64()), ("stats", pa.string()),
                ("rows", pa.int64()), ("read_seconds", pa.float64()),
                ("write_seconds", pa.float64())]))

    return count_partition


def map_in_arrow(df, func, schema):
    """DataFrame.mapInArrow. It needs pyarrow only, but pyspark 4.0 checks for pandas on the
    driver anyway (pandas_udf); the lab's Spark image has no pandas, so skip that check then."""
    import importlib.util

    if importlib.util.find_spec("pandas") is None:
        import pyspark.sql.pandas.functions as pandas_functions

        pandas_functions.require_minimum_pandas_version = lambda: None
    return df.mapInArrow(func, schema)


# ----------------------------------------------------------------------------------------------
# Driver side
# ----------------------------------------------------------------------------------------------

def task_error(exc):
    """(kind, one-line detail) of a failed Spark job: the Python exception raised in a task (kind
    "lake" for storage errors of delta-rs/object_store, else "task"), or the Java root cause
    (kind "jdbc" for PostgreSQL errors)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (\S.*)$", line)
        if m and not m.group(1).startswith(("py4j", "org.apache.spark", "Py4J", "pyspark")):
            # a delta-rs error chain may continue on the following lines
            rest = text[text.index(line) + len(line):].split("\n\n")[0]
            detail = re.sub(r"(https?://[^\s?]+)\?\S*", r"\1", f"{m.group(1)}: {m.group(2)} {rest}")
            kind = "lake" if re.search(r"MicrosoftAzure|object.?store|az://", detail) else "task"
            if "PSQLException" in detail or "SQLException" in detail:
                kind = "jdbc"
            return kind, one_line(detail, limit=400)
    cause = java_root_cause(exc)
    return ("jdbc" if "SQLException" in cause or "postgresql" in cause else "task"), cause


class Db:
    """A JDBC connection on the driver JVM (py4j), for the small bound queries."""

    def __init__(self, jvm, cfg):
        self.url = cfg["jdbc_url"]
        try:
            cls = jvm.org.apache.spark.util.Utils.classForName("org.postgresql.Driver", True, False)
            driver = cls.newInstance()
            props = jvm.java.util.Properties()
            props.setProperty("user", cfg["db_user"])
            props.setProperty("password", cfg["db_password"])
            props.setProperty("connectTimeout", "10")
            props.setProperty("ApplicationName", "labctl-export")
            self.conn = driver.connect(self.url, props)
        except Exception as exc:  # noqa: BLE001
            raise JobError(f"cannot connect to the database at {self.url} as {cfg['db_user']}: "
                           f"{java_root_cause(exc)}") from exc
        if self.conn is None:
            raise JobError(f"the PostgreSQL JDBC driver does not accept the URL {self.url}")

    def bounds(self, table, column, lower_us, lower_inclusive, upper_us):
        cond = []
        if lower_us is not None:
            cond.append(f"{quote_ident(column)} {'>=' if lower_inclusive else '>'} {sql_ts(lower_us)}")
        if upper_us is not None:
            cond.append(f"{quote_ident(column)} < {sql_ts(upper_us)}")
        where = (" WHERE " + " AND ".join(cond)) if cond else ""
        # epoch microseconds as exact integers (no JDBC/JVM time zone in between)
        sql = (f"SELECT (extract(epoch from min({quote_ident(column)})) * 1000000)::bigint, "
               f"(extract(epoch from max({quote_ident(column)})) * 1000000)::bigint "
               f"FROM {quote_ident(table)}{where}")
        try:
            stmt = self.conn.createStatement()
            rs = stmt.executeQuery(sql)
            rs.next()
            lo, hi = rs.getLong(1), rs.getLong(2)
            null = rs.wasNull()
            stmt.close()
        except Exception as exc:  # noqa: BLE001
            raise JobError(f"query on table {table} failed: {java_root_cause(exc)}") from exc
        return (None, None) if null else (lo, hi)

    def close(self):
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass


def slice_edges(lo_us, hi_us, n):
    """n slices [e_i, e_i+1) covering [lo, hi]; inner edges on UTC midnights when the range
    spans at least n days (fewer files per day), otherwise equal time slices."""
    span = hi_us - lo_us
    if n <= 1 or span <= 0:
        return [lo_us, hi_us]
    edges = [lo_us + span * i // n for i in range(1, n)]
    if span >= n * DAY_US:
        edges = [(e + DAY_US // 2) // DAY_US * DAY_US for e in edges]
    edges = sorted({e for e in edges if lo_us < e <= hi_us})
    return [lo_us] + edges + [hi_us]


def arrow_type_for(spark_type):
    import pyarrow as pa
    from pyspark.sql import types as T

    mapping = [
        (T.TimestampType, pa.timestamp("us", tz="UTC")),
        (T.TimestampNTZType, pa.timestamp("us")),
        (T.DoubleType, pa.float64()), (T.FloatType, pa.float32()),
        (T.LongType, pa.int64()), (T.IntegerType, pa.int32()), (T.ShortType, pa.int16()),
        (T.ByteType, pa.int8()), (T.BooleanType, pa.bool_()), (T.StringType, pa.string()),
        (T.DateType, pa.date32()), (T.BinaryType, pa.binary()),
    ]
    for cls, arrow in mapping:
        if isinstance(spark_type, cls):
            return arrow
    if isinstance(spark_type, T.DecimalType):
        return pa.decimal128(spark_type.precision, spark_type.scale)
    return None


def exact_max_time(dt_table, opts, table_uri, time_column):
    """Exact newest instant (int us) in the table's time column, or None if the table is empty.
    Stats hold millisecond-truncated maxima, so only files whose stats max equals the largest one
    are read (just the time column); files without stats are read too."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    from deltalake.fs import DeltaStorageHandler

    adds = pa.table(dt_table.get_add_actions(flatten=True))
    if adds.num_rows == 0:
        return None
    paths = adds.column("path").to_pylist()
    stat_col = f"max.{time_column}"
    if stat_col in adds.column_names:
        maxima = adds.column(stat_col).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_pylist()
    else:
        maxima = [None] * len(paths)
    known = [m for m in maxima if m is not None]
    top = max(known) if known else None
    candidates = [p for p, m in zip(paths, maxima) if m is None or m == top]
    fs = pafs.PyFileSystem(DeltaStorageHandler(table_uri, opts))
    best = None
    for path in candidates:
        col = pq.read_table(path, columns=[time_column], filesystem=fs).column(time_column)
        if col.length() - col.null_count == 0:
            continue
        v = pc.max(col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())).as_py()
        best = v if best is None else max(best, v)
    return best


def vacuum_unreferenced(table, table_uri, opts, removed):
    """Vacuum with retention 0 for the files this commit removed: they are deleted at once.
    Other data files that the current version does not reference (files of failed runs, or of
    an earlier vacuum that failed) are deleted once older than ORPHAN_GRACE_SECONDS, so the
    uncommitted files of an export running at the same time are never touched.
    Not DeltaTable.vacuum: in deltalake 1.6.6 it re-lists already deleted tombstones on every call
    and appends two log entries (VACUUM START/END) to every run; and with retention 0 it would
    delete a concurrent writer's uncommitted files. Hidden paths (_delta_log, ...) are skipped."""
    from urllib.parse import unquote

    import pyarrow as pa
    import pyarrow.fs as pafs
    from deltalake.fs import DeltaStorageHandler

    referenced = {unquote(p) for p in pa.table(table.get_add_actions()).column("path").to_pylist()}
    removed = {unquote(p) for p in removed}
    fs = pafs.PyFileSystem(DeltaStorageHandler(table_uri, opts))
    cutoff = time.time() - ORPHAN_GRACE_SECONDS
    deleted = kept = 0
    for info in fs.get_file_info(pafs.FileSelector("", recursive=True, allow_not_found=True)):
        path = info.path.lstrip("/")
        if info.type != pafs.FileType.File or not path.endswith(".parquet"):
            continue
        if any(seg.startswith(("_", ".")) for seg in path.split("/")):
            continue
        path = unquote(path)
        if path in referenced:
            continue
        if path in removed or (info.mtime is not None and info.mtime.timestamp() < cutoff):
            fs.delete_file(info.path.lstrip("/"))
            deleted += 1
        else:
            kept += 1
    return deleted, kept


def plan_table(jvm, cfg, tcfg, now):
    """Before Spark starts: the table's Delta state, the effective range and the bounds of the
    data in it (one query on the driver JVM). Returns (plan, result)."""
    from deltalake import DeltaTable

    phases = {}
    lake = cfg["lake"]
    opts = storage_options(lake)
    name, time_column = tcfg["name"], tcfg["time_column"]
    delta_path = tcfg["delta_path"].strip("/")
    table_uri = f"az://{lake['container']}/{delta_path}"
    result = {"name": name, "delta_uri": table_uri, "committed": False, "rows_read": 0,
              "rows_written": 0, "files": 0, "files_removed": 0, "vacuumed": 0, "orphans_kept": 0,
              "delta_version": None, "previous_version": None, "partitions": []}

    # -- current table state (also the early reachability check of the lake)
    t = time.time()
    try:
        if DeltaTable.is_deltatable(table_uri, storage_options=opts):
            table = DeltaTable(table_uri, storage_options=opts)
        else:
            table = None
    except Exception as exc:  # noqa: BLE001
        raise JobError(f"lake storage unreachable at {lake.get('endpoint') or 'Azure'} "
                       f"(account {lake['account']}, container {lake['container']}, table "
                       f"{delta_path}): {one_line(exc)}") from exc
    if table is not None:
        result["previous_version"] = result["delta_version"] = table.version()
        part_cols = table.metadata().partition_columns
        if part_cols != PARTITION_COLUMNS:
            raise JobError(f"{table_uri} is partitioned by {part_cols}, expected {PARTITION_COLUMNS}")

    # -- effective range
    if cfg["_from"] is not None:
        mode = "replace"
        lower = floor_day(cfg["_from"])
        upper = ceil_day(cfg["_to"] or now)
        lower_us, lower_inclusive, upper_us = to_us(lower), True, to_us(upper)
    else:
        mode = "incremental"
        # Not `now`: Flink writes a reading a few seconds after its timestamp, and one that lands
        # below an exported bound would be skipped for good (the next run starts above it).
        upper = cfg["_to"] or now - dt.timedelta(seconds=SETTLE_SECONDS)
        upper_us = to_us(upper)
        try:
            lower_us = exact_max_time(table, opts, table_uri, time_column) if table else None
        except Exception as exc:  # noqa: BLE001
            raise JobError(f"cannot read the newest exported instant of {table_uri}: "
                           f"{one_line(exc)}") from exc
        lower = from_us(lower_us) if lower_us is not None else None
        lower_inclusive = False
    result.update(mode=mode, **{"from": iso(lower), "to": iso(upper)})
    phases["lake_state"] = round(time.time() - t, 3)

    # -- bounds of the data in range
    t = time.time()
    lo_us = hi_us = None
    if lower_us is None or lower_us < upper_us:
        db = Db(jvm, cfg)
        try:
            lo_us, hi_us = db.bounds(name, time_column, lower_us, lower_inclusive, upper_us)
        finally:
            db.close()
    phases["bounds_query"] = round(time.time() - t, 3)
    result["phases"] = phases
    rng = f"{'[' if lower_inclusive else '('}{iso(lower) or '-inf'}, {iso(upper)})"
    if lo_us is None:
        result["message"] = (f"{name}: no rows in range {rng}; nothing exported, {table_uri} "
                             f"left at version {result['previous_version']}")
        log(result["message"])
        return None, result
    log(f"{name}: {mode} export of {rng}, data {iso(from_us(lo_us))} .. {iso(from_us(hi_us))} "
        f"-> {table_uri}")
    plan = {"name": name, "time_column": time_column, "table_uri": table_uri, "opts": opts,
            "table": table, "mode": mode, "lower": lower, "upper": upper, "lo_us": lo_us,
            "hi_us": hi_us}
    return plan, result


def export_table(spark, cfg, plan, result):
    """Read the planned range over JDBC, write Parquet files on the executors, commit once,
    vacuum."""
    import pyarrow as pa
    from deltalake import DeltaTable
    from deltalake.transaction import (AddAction, CommitProperties, RemoveAction,
                                       create_table_with_add_actions)

    phases = result["phases"]
    name, time_column, table_uri, opts = (plan["name"], plan["time_column"], plan["table_uri"],
                                          plan["opts"])
    table, mode, lower, upper = plan["table"], plan["mode"], plan["lower"], plan["upper"]
    lo_us, hi_us = plan["lo_us"], plan["hi_us"]

    # -- parallel JDBC read, executors write Parquet files
    t = time.time()
    edges = slice_edges(lo_us, hi_us, cfg["partitions"])
    col = quote_ident(time_column)
    predicates = []
    for i in range(len(edges) - 1):
        last = i == len(edges) - 2
        predicates.append(f"{col} >= {sql_ts(edges[i])} AND {col} {'<=' if last else '<'} "
                          f"{sql_ts(edges[i + 1])}")
    props = {"user": cfg["db_user"], "password": cfg["db_password"],
             "driver": "org.postgresql.Driver", "fetchsize": "20000"}
    df = spark.read.jdbc(cfg["jdbc_url"], quote_ident(name), predicates=predicates, properties=props)
    from pyspark.sql import types as T

    columns = []
    for field in df.schema.fields:
        arrow = arrow_type_for(field.dataType)
        if arrow is None:
            raise JobError(f"{name}.{field.name}: unsupported column type {field.dataType}")
        if field.name in PARTITION_COLUMNS:
            raise JobError(f"{name}.{field.name}: column name clashes with a partition column")
        columns.append((field.name, arrow))
    time_type = dict((f.name, f.dataType) for f in df.schema.fields).get(time_column)
    if not isinstance(time_type, T.TimestampType):
        raise JobError(f"{name}: time column {time_column} missing or not a timestamp with time zone "
                       f"(got {time_type})")
    read_only = cfg["read_only"]
    writer = make_partition_counter() if read_only else make_partition_writer(table_uri, opts,
                                                                              time_column)
    phases["jdbc_schema"] = round(time.time() - t, 3)
    t = time.time()
    try:
        out = [r.asDict() for r in map_in_arrow(df, writer, FILE_META_SCHEMA).collect()]
    except Exception as exc:  # noqa: BLE001
        kind, detail = task_error(exc)
        what = {"lake": "writing Parquet files to the lake", "jdbc": f"reading {name} over JDBC"}
        raise JobError(f"export of {name} failed, {what.get(kind, 'Spark job')}: {detail} "
                       f"(nothing committed, {table_uri} left at version "
                       f"{result['previous_version']})") from exc
    phases["read_write"] = round(time.time() - t, 3)
    # inside the tasks: receiving the JDBC rows as Arrow vs. encoding + uploading Parquet files
    phases["tasks_jdbc_read"] = round(sum(o["read_seconds"] or 0 for o in out), 3)
    phases["tasks_parquet_write"] = round(sum(o["write_seconds"] or 0 for o in out), 3)
    files = [{"path": o["file_path"], "size": o["size"], "modification_time": o["modification_time"],
              "partition_values": {"year": o["year"], "month": o["month"], "day": o["day"]},
              "stats": o["stats"], "rows": o["rows"]} for o in out if o["file_path"]]
    result["rows_read"] = sum(o["rows_read"] for o in out)
    result["rows_written"] = sum(f["rows"] for f in files)
    result["files"] = len(files)
    written_days = sorted({(f["partition_values"]["year"], f["partition_values"]["month"],
                            f["partition_values"]["day"]) for f in files},
                          key=lambda k: tuple(int(x) for x in k))
    result["partitions"] = [list(k) for k in written_days]
    if read_only:
        result["message"] = (f"{name}: read {result['rows_read']} rows (read_only: nothing "
                             f"written, {table_uri} left at version {result['previous_version']})")
        log(result["message"])
        return result
    if result["rows_written"] != result["rows_read"]:
        raise JobError(f"{name}: read {result['rows_read']} rows but wrote {result['rows_written']}")

    # -- one commit: adds (+ removes of the replaced days)
    t = time.time()
    schema = pa.schema([pa.field(n, ty) for n, ty in columns] +
                       [pa.field(p, pa.int32()) for p in PARTITION_COLUMNS])
    adds = [AddAction(f["path"], f["size"], f["partition_values"], f["modification_time"], True,
                      f["stats"]) for f in files]
    info = {"labctl.export": {"table": name, "mode": mode, "from": iso(lower), "to": iso(upper),
                              "rows": result["rows_written"], "files": len(files)}}
    removes = []
    try:
        if table is None:
            from deltalake import Schema as DeltaSchema
            create_table_with_add_actions(
                table_uri, DeltaSchema.from_arrow(schema), adds, mode="error",
                partition_by=PARTITION_COLUMNS, storage_options=opts,
                commit_properties=CommitProperties(custom_metadata=info))
            table = DeltaTable(table_uri, storage_options=opts)
        else:
            if mode == "replace":
                first, end = lower.date(), upper.date()
                existing = pa.table(table.get_add_actions(flatten=True)).to_pylist()
                now_ms = int(time.time() * 1000)
                for a in existing:
                    d = dt.date(int(a["partition.year"]), int(a["partition.month"]),
                                int(a["partition.day"]))
                    if first <= d < end:
                        removes.append(RemoveAction(
                            a["path"], True, now_ms, a["size_bytes"],
                            {p: str(a[f"partition.{p}"]) for p in PARTITION_COLUMNS}))
            result["files_removed"] = len(removes)
            table.create_write_transaction(
                adds + removes, mode="append", schema=schema, partition_by=PARTITION_COLUMNS,
                commit_properties=CommitProperties(custom_metadata=info))
            table.update_incremental()
    except Exception as exc:  # noqa: BLE001
        raise JobError(f"Delta commit to {table_uri} failed (table left at version "
                       f"{result['previous_version']}): {one_line(exc)}") from exc
    result["delta_version"] = table.version()
    result["committed"] = True
    phases["commit"] = round(time.time() - t, 3)
    log(f"{name}: committed version {result['delta_version']}: {result['rows_written']} rows, "
        f"{len(files)} files added, {result['files_removed']} removed")

    # -- vacuum: files no longer referenced and files of failed runs
    t = time.time()
    try:
        result["vacuumed"], result["orphans_kept"] = vacuum_unreferenced(
            table, table_uri, opts, [r.path for r in removes])
    except Exception as exc:  # noqa: BLE001  (the data is committed; the next run vacuums again)
        result["vacuum_error"] = one_line(exc)
        log(f"WARNING: vacuum of {table_uri} failed, retried by the next run: {one_line(exc)}")
    phases["vacuum"] = round(time.time() - t, 3)
    result["message"] = (f"{name}: {result['rows_written']} rows in {len(written_days)} day "
                         f"partitions committed as version {result['delta_version']}")
    return result


def main(cfg):
    """Runs the export of a loaded config; returns the summary (also printed)."""
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    now = dt.datetime.now(dt.timezone.utc)
    SparkContext._ensure_initialized()  # the driver JVM's py4j gateway, no SparkContext yet
    jvm = SparkContext._jvm
    try:
        jvm_start = jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getStartTime()
    except Exception:  # noqa: BLE001
        jvm_start = int(T0 * 1000)
    startup = {"jvm_to_python": round(T0 - jvm_start / 1000, 3)}

    # Plan every table first: a run with nothing to export never starts a Spark application.
    planned = []
    for tcfg in cfg["tables"]:
        t = time.time()
        plan, result = plan_table(jvm, cfg, tcfg, now)
        result["seconds"] = round(time.time() - t, 3)
        planned.append((plan, result))

    spark = None
    if any(plan for plan, _ in planned):
        t = time.time()
        conf = SparkConf()  # spark.* from the submission; the app name only as a fallback
        if not conf.contains("spark.app.name"):
            conf.setAppName("labctl-timescale-to-deltalake")
        threads = conf.get("spark.labctl.driverTaskThreads", None)
        if threads:  # one worker: the tasks run in this driver (cores granted to it by labctl),
            # with a failed task retried like on executors (spark.task.maxFailures, default 4)
            conf.setMaster(f"local[{int(threads)},{conf.get('spark.task.maxFailures', '4')}]")
        sc = SparkContext.getOrCreate(conf)
        startup["spark_context"] = round(time.time() - t, 3)
        t = time.time()
        spark = SparkSession(sc)
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "100000")
        startup["spark_session"] = round(time.time() - t, 3)
        log(f"Spark ready: {startup}")
    results = []
    for plan, result in planned:
        if plan is not None:
            t = time.time()
            export_table(spark, cfg, plan, result)
            result["seconds"] = round(result["seconds"] + time.time() - t, 3)
        results.append(result)
    days = sorted({tuple(p) for r in results for p in r["partitions"]},
                  key=lambda k: tuple(int(x) for x in k))
    summary = {
        "rows_read": sum(r["rows_read"] for r in results),
        "rows_written": sum(r["rows_written"] for r in results),
        "files": sum(r["files"] for r in results),
        "files_removed": sum(r["files_removed"] for r in results),
        "delta_version": results[0]["delta_version"],
        "committed": any(r["committed"] for r in results),
        "partitions": [list(d) for d in days],
        "tables": results,
        "message": "; ".join(r["message"] for r in results),
        "startup": startup,
        "read_only": cfg["read_only"],
        "seconds": round(time.time() - jvm_start / 1000, 3),
    }
    if spark is not None:
        spark.stop()
    print(PREFIX_RESULT + json.dumps(summary, separators=(",", ":")), flush=True)
    return summary


def report_error(line):
    """The LABCTL_ERROR line on stdout, and on stderr unless both are the same pipe (a Spark
    driver's PythonRunner merges the Python process' stderr into its stdout)."""
    print(line, flush=True)
    try:
        same = os.path.sameopenfile(1, 2)
    except OSError:
        same = False
    if not same:
        print(line, file=sys.stderr, flush=True)


def error_result(err):
    tail = traceback.format_exc().rstrip("\n").splitlines()[-TRACEBACK_TAIL_LINES:]
    return {"error": f"{type(err).__name__}: {one_line(err, limit=1000)}",
            "traceback_tail": "\n".join(tail)}


if __name__ == "__main__":
    config = None
    try:
        config = load_config(sys.argv)  # config/range errors fail before Spark starts
        outcome = main(config)
        if config.get("result_url"):
            put_result(config["result_url"], outcome)
    except JobError as err:
        report_error(PREFIX_ERROR + one_line(err, limit=1000))
        if config and config.get("result_url"):
            put_result(config["result_url"], error_result(err))
        raise
    except Exception as err:  # noqa: BLE001
        report_error(PREFIX_ERROR + f"unexpected {type(err).__name__}: {one_line(err, limit=600)}")
        if config and config.get("result_url"):
            put_result(config["result_url"], error_result(err))
        raise
