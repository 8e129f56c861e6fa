#!/bin/sh
# Entry point of the image: one role per container.
#
#   master              Spark standalone master on $SPARK_MASTER_HOST:7077 (web UI :8080)
#   worker URL          Spark worker registering with URL (e.g. spark://master:7077)
#   demo [ARGS]         `make demo`'s job: python jobs/demo.py ARGS
#   train-images [ARGS] python jobs/train_images.py ARGS
#   train-text [ARGS]   python jobs/train_text.py ARGS
#   pipeline [ARGS]     the `pipeline` command (convert, inspect, bench)
#   test [ARGS]         the test suite: python -m pytest ARGS
#   anything else       run as given (e.g. `bash`, `python ...`)
#
# When SPARK_DRIVER_HOST is set (a driver that cluster executors must reach, e.g. the compose
# runner), the configs are copied to a scratch folder with conf/spark.yaml's bind_address set to
# it, and PIPELINE_CONF_DIR points there.
set -eu

APP_DIR=${APP_DIR:-/app}
cd "$APP_DIR"

if [ -n "${SPARK_DRIVER_HOST:-}" ]; then
    conf_dir=${PIPELINE_RUNTIME_CONF:-/tmp/pipeline-conf}
    mkdir -p "$conf_dir"
    cp "$APP_DIR"/conf/*.yaml "$conf_dir"/
    sed "s/^bind_address:.*/bind_address: $SPARK_DRIVER_HOST   # set by docker\/entrypoint.sh from SPARK_DRIVER_HOST/" \
        "$APP_DIR/conf/spark.yaml" > "$conf_dir/spark.yaml"
    export PIPELINE_CONF_DIR="$conf_dir"
    export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-$SPARK_DRIVER_HOST}"
fi

role=${1:-demo}
[ $# -gt 0 ] && shift

case "$role" in
    master)
        exec spark-class org.apache.spark.deploy.master.Master \
            --host "${SPARK_MASTER_HOST:-$(hostname)}" --port "${SPARK_MASTER_PORT:-7077}" \
            --webui-port "${SPARK_MASTER_WEBUI_PORT:-8080}" "$@"
        ;;
    worker)
        url=${1:?usage: worker spark://HOST:PORT}
        shift
        exec spark-class org.apache.spark.deploy.worker.Worker "$url" \
            --host "${SPARK_WORKER_HOST:-$(hostname)}" --cores "${SPARK_WORKER_CORES:-2}" \
            --memory "${SPARK_WORKER_MEMORY:-4g}" --webui-port "${SPARK_WORKER_WEBUI_PORT:-8081}" "$@"
        ;;
    demo)
        exec python jobs/demo.py "$@"
        ;;
    train-images)
        exec python jobs/train_images.py "$@"
        ;;
    train-text)
        exec python jobs/train_text.py "$@"
        ;;
    pipeline)
        exec pipeline "$@"
        ;;
    test)
        # The image holds the default stack only. The petastorm compatibility suite needs the
        # petastorm env (make test builds .venv-petastorm outside Docker): skipped here unless
        # one was mounted at /app/.venv-petastorm.
        if [ ! -x /app/.venv-petastorm/bin/python ]; then
            export PIPELINE_SKIP_PETASTORM_COMPAT="${PIPELINE_SKIP_PETASTORM_COMPAT:-1}"
        fi
        exec python -m pytest "$@"
        ;;
    *)
        exec "$role" "$@"
        ;;
esac
