#!/bin/sh
# Router image entrypoint: copies the container-side libraries into the socket directory that
# application containers mount (libfsocket.so, and build/verbs/ for RDMA mode), then runs the
# router there. Arguments are the router's (see `freeflow router --help`).
set -eu
dir="${FFR_SOCKET_DIR:-/freeflow}"
mkdir -p "$dir/verbs"
cp /opt/freeflow/build/lib/libfsocket.so "$dir/libfsocket.so"
cp -P /opt/freeflow/build/verbs/*.so* "$dir/verbs/"
exec node /opt/freeflow/bin/freeflow.js router --socket-dir "$dir" "$@"
