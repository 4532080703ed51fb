#!/bin/sh
# Entry point of both lipwass images. The first argument names the role; anything else runs as is.
#   api      lipwass serve on 0.0.0.0:${LIPWASS_PORT:-8000} (any number of replicas)
#   worker   lipwass worker: one process, one thread, one GPU (${LIPWASS_GPU} pins one, optional)
#   migrate  lipwass migrate: bring the database schema up to date, then exit
# Settings come from LIPWASS_* environment variables (compose: env_file .env); none are baked in.
set -eu
role="${1:-api}"
case "$role" in
  api)
    shift || true
    exec lipwass serve --host 0.0.0.0 --port "${LIPWASS_PORT:-8000}" "$@"
    ;;
  worker)
    shift || true
    if [ -n "${LIPWASS_GPU:-}" ]; then
      exec lipwass worker --gpu "$LIPWASS_GPU" "$@"
    fi
    exec lipwass worker "$@"
    ;;
  migrate)
    shift || true
    exec lipwass migrate "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
