#!/bin/sh
# Router image entrypoint: puts the container-side libraries into the socket directory that
# application containers mount read-only (libfsocket.so, and build/verbs/ for RDMA mode), then
# runs the router there. Arguments are the router's (see `freeflow router --help`).
#
# Only this container (root) may write the directory; application containers get it with `:ro`
# (docker/README.md). Still, nothing here writes through a name found in it: each library is
# copied to a fresh temporary name and renamed over the old one, which replaces a planted link
# instead of writing where it points. The router then refuses the directory unless it is root's
# and not writable by group or others (src/router/socket-dir.ts).
set -eu
dir="${FFR_SOCKET_DIR:-/freeflow}"
mkdir -p "$dir"
if [ -L "$dir" ] || [ ! -d "$dir" ]; then
  echo "freeflow: socket directory $dir is not a directory (a symlink is refused)" >&2
  exit 1
fi
chown root:root "$dir"
chmod 0755 "$dir"

# install SRC DST: DST becomes a copy of SRC (a symlink stays a symlink) by one rename.
install_lib() {
  tmp="$2.new.$$"
  rm -f "$tmp"
  cp -P "$1" "$tmp"
  mv -f -T "$tmp" "$2"
}
# The verbs directory: a link or file there (not ours) is removed, never followed.
if [ -L "$dir/verbs" ] || { [ -e "$dir/verbs" ] && [ ! -d "$dir/verbs" ]; }; then rm -f "$dir/verbs"; fi
mkdir -p "$dir/verbs"
chmod 0755 "$dir/verbs"
install_lib /opt/freeflow/build/lib/libfsocket.so "$dir/libfsocket.so"
for f in /opt/freeflow/build/verbs/*.so*; do install_lib "$f" "$dir/verbs/${f##*/}"; done
exec node /opt/freeflow/bin/freeflow.js router --socket-dir "$dir" "$@"
