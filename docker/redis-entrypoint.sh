#!/bin/sh
# Entry point of docker/Dockerfile.redis: redis-server with protected mode off (as in the official
# image: without a password, protected mode refuses every client not on loopback), and the
# arguments given (compose's command); anything else runs as is.
set -eu
if [ "${1:-}" = redis-server ]; then
  shift
  set -- redis-server --protected-mode no "$@"
fi
exec "$@"
