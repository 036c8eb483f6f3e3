#!/bin/bash
# labctl Spark entrypoint (runs as user spark under tini).
#   master [extra Master args]
#       env SPARK_MASTER_HOST (spark-master: the container's network name/alias),
#       SPARK_MASTER_OPTS (extra -D options); RPC 7077, web UI 8080, REST 6066.
#   worker [spark://spark-master:7077] [extra Worker args]
#       env SPARK_WORKER_CORES (2), SPARK_WORKER_MEMORY (2g), SPARK_WORKER_OPTS;
#       work dir /var/lib/spark/work (drivers' stdout/stderr in driver-<id>/), web UI 8081.
#   anything else: exec'd as is (e.g. bash, spark-submit, python).
# Both daemons run in the foreground and log to stderr; SIGTERM stops them.
set -euo pipefail

role="${1:-master}"
[ $# -gt 0 ] && shift

case "$role" in
  master)
    export SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=true -Dspark.master.rest.port=6066 ${SPARK_MASTER_OPTS:-}"
    export SPARK_DAEMON_JAVA_OPTS="-Duser.timezone=UTC -Djava.security.egd=file:/dev/urandom ${SPARK_DAEMON_JAVA_OPTS:-}"
    # spark.rest_tokens: labctl places a key as a file; Spark 4's JWSFilter then turns away
    # every REST request without a token signed with it. The key goes into a properties file
    # only this user reads, never into the environment or the command line.
    props=()
    if [ -f /run/secrets/spark-rest-key ]; then
      conf="$(umask 077 && mktemp /var/lib/spark/master.XXXXXX.conf)"
      cat "${SPARK_CONF_DIR:-/etc/spark}/spark-defaults.conf" > "$conf" 2>/dev/null || true
      printf '%s\n' 'spark.master.rest.filters org.apache.spark.ui.JWSFilter' \
        "spark.org.apache.spark.ui.JWSFilter.param.secretKey $(cat /run/secrets/spark-rest-key)" >> "$conf"
      props=(--properties-file "$conf")
      echo "[labctl-spark] REST submissions need a token signed with the lab's key" >&2
    fi
    exec spark-class org.apache.spark.deploy.master.Master \
      --host "${SPARK_MASTER_HOST:-spark-master}" --port 7077 --webui-port 8080 "${props[@]}" "$@"
    ;;
  worker)
    master_url="spark://spark-master:7077"
    if [ $# -gt 0 ] && [[ "$1" == spark://* ]]; then master_url="$1"; shift; fi
    export SPARK_DAEMON_JAVA_OPTS="-Duser.timezone=UTC -Djava.security.egd=file:/dev/urandom ${SPARK_DAEMON_JAVA_OPTS:-}"
    # The worker puts its conf folder first on its drivers' class path, and a driver maps the
    # image's class-data archive only with the empty folder it was made with (see the
    # Dockerfile). Nothing the worker or a driver needs is in /etc/spark: a submission's
    # settings come with it.
    if [ -d /usr/lib/labctl/spark-driver-conf ]; then
      export SPARK_CONF_DIR=/usr/lib/labctl/spark-driver-conf
    fi
    mkdir -p "${SPARK_WORKER_DIR:-/var/lib/spark/work}"
    exec spark-class org.apache.spark.deploy.worker.Worker \
      --cores "${SPARK_WORKER_CORES:-2}" --memory "${SPARK_WORKER_MEMORY:-2g}" \
      --work-dir "${SPARK_WORKER_DIR:-/var/lib/spark/work}" --webui-port 8081 \
      "$@" "$master_url"
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
