#!/usr/bin/env bash
# FreeFlow testbed: emulated hosts + containers on a VXLAN overlay, built
# entirely out of Linux network namespaces (no docker daemon needed). Containers are made as
# Kubernetes makes them: through the CNI plugins of Debian's containernetworking-plugins
# (bridge + host-local IPAM), chained with FreeFlow's plugin (build/cni/freeflow), which
# registers each container's namespace with its host's router; hosts are joined by a VXLAN
# device set up as Flannel's vxlan backend sets it up (one /24 per host, routed).
#
#   scripts/testbed.sh up                 build the testbed (runs `down` first if needed)
#   scripts/testbed.sh down               tear everything with this prefix down
#   scripts/testbed.sh exec NODE CMD...   run CMD inside NODE's namespace with node env vars
#   scripts/testbed.sh env NODE           print `export` lines for NODE
#   scripts/testbed.sh list               print "NAME ROLE IP" for each node
#   scripts/testbed.sh counters HOST [DEV] print "tx_bytes rx_bytes" of HOST's flannel.1 (or DEV, e.g. lo)
#
# Environment:
#   FF_TB             name prefix (default fftb); namespaces are "${FF_TB}-<node>"
#   FF_TB_HOSTS       number of hosts (default 2, 1..99)
#   FF_TB_CONTAINERS  containers per host (default 2, 1..9)
#   FF_TB_DIR         router socket dir root (default /tmp/${FF_TB}); per host "<dir>/h<i>"
#
# Safety: every link/address/route/sysctl is created inside namespaces this
# script creates (ip -n / ip netns exec). Nothing is configured in the root
# namespace and the only addresses used are the testbed's own
# (192.168.77.0/24 underlay, 10.244.0.0/16 overlay) plus loopback.
# See docs/testbed.md.
set -euo pipefail

FF_TB="${FF_TB:-fftb}"
FF_TB_HOSTS="${FF_TB_HOSTS:-2}"
FF_TB_CONTAINERS="${FF_TB_CONTAINERS:-2}"

HOST_NET=192.168.77            # underlay: 192.168.77.<i>/24 on phy0
HOST_IP_PREFIX_DEFAULT=192.168.77.0/24
VNET_PREFIX_DEFAULT=10.244.0.0/16   # overlay: 10.244.<host>.<10+k>/24 on eth0, one /24 per host
OVL_DEV=flannel.1              # Flannel's names and defaults: VNI 1, UDP port 8472
VXLAN_ID=1
VXLAN_PORT=8472
PHY_MTU=1500
OVL_MTU=1450
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PROG="${0##*/}"

die() { echo "$PROG: error: $*" >&2; exit 1; }
log() { echo "$PROG[$FF_TB]: $*" >&2; }

usage() {
  cat >&2 <<EOF
usage: $PROG up | down | list | env NODE | exec NODE CMD... | counters HOST [DEV]
  env: FF_TB (prefix, default fftb), FF_TB_HOSTS (default 2),
       FF_TB_CONTAINERS (default 2), FF_TB_DIR (default /tmp/\$FF_TB)
EOF
  exit 2
}

# The prefix ends up in file names (/run/netns, /tmp) and in regexes: keep it tame.
[[ "$FF_TB" =~ ^[A-Za-z0-9_][A-Za-z0-9_-]{0,39}$ ]] \
  || die "FF_TB='$FF_TB' must match [A-Za-z0-9_][A-Za-z0-9_-]{0,39}"

# Only namespaces that look exactly like ours are ever touched, so FF_TB=ff
# never matches FF_TB=ff-x's namespaces (ff-x-h1 is not ff-<node>).
NS_RE="^${FF_TB}-(sw|h[0-9]+|c[0-9]+)\$"

ns_of() { echo "${FF_TB}-$1"; }

tb_dir() {
  local d="${FF_TB_DIR:-/tmp/${FF_TB}}"
  realpath -m -- "$d"
}

# Our namespaces that currently exist (names without prefix), sorted sw,h*,c*.
our_ns() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "$NS_RE" || true
}
our_nodes() {
  our_ns | sed "s/^${FF_TB}-//" | sort -V
}
ns_exists() { [[ -e "/run/netns/$(ns_of "$1")" ]]; }

# Existing host indices, ascending.
host_indices() {
  our_nodes | sed -n 's/^h\([0-9][0-9]*\)$/\1/p' | sort -n
}

# Node parsing. Containers are c<host><k> with k a single digit 1..9.
node_role() {
  case "$1" in
    sw) echo switch ;;
    h[1-9]|h[1-9][0-9]) echo host ;;
    c[1-9][1-9]|c[1-9][0-9][1-9]) echo container ;;
    *) echo unknown ;;
  esac
}
c_host() { local n="${1#c}"; echo "${n:0:${#n}-1}"; }
c_k()    { local n="${1#c}"; echo "${n: -1}"; }

node_ip() {
  case "$(node_role "$1")" in
    host) echo "${HOST_NET}.${1#h}" ;;
    container) echo "10.244.$(c_host "$1").$((10 + $(c_k "$1")))" ;;
    *) echo "-" ;;
  esac
}

# KEY=VALUE lines for a node. Caller-provided VNET_PREFIX / HOST_IP_PREFIX /
# FF_PEERS win; FFR_SOCKET_DIR and FF_NODE_* always come from the node.
node_vars() {
  local node="$1" role h peers="" j
  role="$(node_role "$node")"
  case "$role" in
    container)
      h="$(c_host "$node")"
      echo "FFR_SOCKET_DIR=$(tb_dir)/h$h"
      echo "VNET_PREFIX=${VNET_PREFIX:-$VNET_PREFIX_DEFAULT}"
      echo "FF_NODE_IP=$(node_ip "$node")"
      echo "FF_NODE_HOST=h$h"
      ;;
    host)
      h="${node#h}"
      for j in $(host_indices); do
        [[ "$j" == "$h" ]] && continue
        peers="${peers:+$peers,}${HOST_NET}.$j"
      done
      echo "FFR_SOCKET_DIR=$(tb_dir)/h$h"
      echo "FFR_STATE_DIR=$(state_dir "$h")"
      echo "FFR_CLUSTER_KEY_FILE=$(tb_dir)/cluster.key"
      echo "HOST_IP_PREFIX=${HOST_IP_PREFIX:-$HOST_IP_PREFIX_DEFAULT}"
      echo "FF_NODE_IP=${HOST_NET}.$h"
      echo "FF_PEERS=${FF_PEERS-$peers}"
      ;;
    switch) ;;
    *) die "unknown node '$node'" ;;
  esac
}

# The router's registry of container namespaces (root-only, never shared with containers).
state_dir() { echo "$(tb_dir)/state/h$1"; }

# Flannel gives each host's VXLAN device a MAC address it publishes; ours is derived from the index.
ovl_mac() { printf '02:f1:00:00:%02x:%02x' $(($1 / 256)) $(($1 % 256)); }

# The CNI network configuration list of host i: the bridge plugin with host-local IPAM (this
# host's /24; containers from .11 on, so c<i><k> gets 10.244.<i>.<10+k>), then FreeFlow's plugin.
write_conflist() {
  local i="$1" d
  d="$(tb_dir)/cni"
  cat > "$d/h$i.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "overlay", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "mtu": $OVL_MTU, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$d/ipam-h$i",
            "ranges": [[{"subnet": "10.244.$i.0/24", "rangeStart": "10.244.$i.11", "gateway": "10.244.$i.1"}]],
            "routes": [{"dst": "10.244.0.0/16"}]}},
  {"type": "freeflow", "routerName": "ffrouter", "socketDir": "$(tb_dir)/h$i", "stateDir": "$(state_dir "$i")"}
]}
JSON
}

need_node() {
  local node="${1:-}"
  [[ -n "$node" ]] || usage
  [[ "$(node_role "$node")" != unknown ]] || die "invalid node name '$node'"
  ns_exists "$node" || die "node '$node' does not exist (namespace $(ns_of "$node")); run '$PROG up' with FF_TB=$FF_TB"
}

need_root() {
  [[ $EUID -eq 0 ]] || die "must run as root (network namespaces)"
  command -v ip >/dev/null || die "iproute2 'ip' not found"
  command -v bridge >/dev/null || die "iproute2 'bridge' not found"
}

# ---------------------------------------------------------------- down

# PIDs of this script and its ancestors: never kill ourselves if `down` is run
# from inside one of the namespaces.
self_chain() {
  local p=$$
  while [[ -n "$p" && "$p" != 0 ]]; do
    echo "$p"
    [[ "$p" == 1 ]] && break
    p="$(awk '/^PPid:/{print $2}' "/proc/$p/status" 2>/dev/null || true)"
  done
}

# Alive and not a zombie (zombies keep kill -0 succeeding until reaped).
proc_alive() {
  local st
  st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null)" || return 1
  st="${st%% *}"
  [[ -n "$st" && "$st" != Z ]]
}

kill_ns_procs() {
  local nss=("$@") ns pids=() p keep i
  keep=" $(self_chain | tr '\n' ' ') "
  for ns in "${nss[@]}"; do
    for p in $(ip netns pids "$ns" 2>/dev/null || true); do
      [[ "$keep" == *" $p "* ]] || pids+=("$p")
    done
  done
  ((${#pids[@]})) || return 0
  log "killing ${#pids[@]} process(es) left in testbed namespaces: ${pids[*]}"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for i in $(seq 1 20); do
    local alive=()
    for p in "${pids[@]}"; do proc_alive "$p" && alive+=("$p"); done
    ((${#alive[@]})) || return 0
    pids=("${alive[@]}")
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
}

do_down() {
  local nss=() ns d
  mapfile -t nss < <(our_ns)
  if ((${#nss[@]})); then
    kill_ns_procs "${nss[@]}"
    for ns in "${nss[@]}"; do
      ip netns del "$ns" 2>/dev/null || [[ ! -e "/run/netns/$ns" ]] \
        || log "warning: could not delete namespace $ns"
    done
  fi
  d="$(tb_dir)"
  if [[ "$d" == /tmp/?* && "${d##*/}" == "$FF_TB" ]]; then
    rm -rf -- "$d"
  elif [[ -d "$d" ]]; then
    log "note: not removing socket dir $d (only /tmp/.../$FF_TB is auto-removed)"
  fi
}

# ---------------------------------------------------------------- up

ns_add() {
  # `ip netns add` can race on first use of /run/netns when several testbeds
  # start concurrently; retry a few times before giving up.
  local i
  for i in 1 2 3 4 5; do
    ip netns add "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  ip netns add "$1"
}

ns_base_config() {
  local ns="$1"
  ip -n "$ns" link set lo up
  # rp_filter off; IPv6 off on every interface created from now on (keeps
  # IPv6 DAD/MLD/RS multicast off the overlay so flannel.1 byte counters only see
  # real test traffic). lo keeps ::1.
  ip netns exec "$ns" sh -c '
    echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter
    echo 0 > /proc/sys/net/ipv4/conf/default/rp_filter
    if [ -w /proc/sys/net/ipv6/conf/default/disable_ipv6 ]; then
      echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
    fi'
}

up_failed() {
  local rc="$1" line="$2" cmd="$3"
  # Only the main shell cleans up (ERR also fires in subshells with set -E).
  if [[ "$BASHPID" != "$$" ]]; then exit "$rc"; fi
  trap - ERR INT TERM
  set +e
  echo "$PROG: error: 'up' failed (exit $rc) at line $line: $cmd" >&2
  echo "$PROG: cleaning up partial testbed '$FF_TB'" >&2
  do_down
  exit 1
}

do_up() {
  local H="$FF_TB_HOSTS" C="$FF_TB_CONTAINERS" i j k h c ns hns cns
  [[ "$H" =~ ^[0-9]+$ ]] && ((H >= 1 && H <= 99)) || die "FF_TB_HOSTS must be 1..99 (got '$H')"
  [[ "$C" =~ ^[0-9]+$ ]] && ((C >= 1 && C <= 9)) || die "FF_TB_CONTAINERS must be 1..9 (got '$C')"

  if [[ -n "$(our_ns)" ]]; then
    log "existing testbed found, tearing it down first"
    do_down
  fi

  set -E
  trap 'up_failed $? $LINENO "$BASH_COMMAND"' ERR
  trap 'up_failed 130 $LINENO interrupted' INT TERM

  # 1. namespaces + base sysctls (before any interface is created)
  local nodes=()
  ((H > 2)) && nodes+=(sw)
  for ((i = 1; i <= H; i++)); do
    nodes+=("h$i")
    for ((k = 1; k <= C; k++)); do nodes+=("c$i$k"); done
  done
  for n in "${nodes[@]}"; do
    ns="$(ns_of "$n")"
    ns_add "$ns"
    ns_base_config "$ns"
  done

  # 2. underlay ("physical") network
  if ((H == 1)); then
    # single host: phy0 is one end of a veth whose other end (phy0p) is just
    # left up in the same namespace (the dummy module may be unavailable).
    ip -n "$(ns_of h1)" link add phy0 type veth peer name phy0p
    ip -n "$(ns_of h1)" link set phy0p up
  elif ((H == 2)); then
    ip -n "$(ns_of h1)" link add phy0 type veth peer name phy0 netns "$(ns_of h2)"
  else
    local sw
    sw="$(ns_of sw)"
    ip -n "$sw" link add sw0 type bridge stp_state 0 mcast_snooping 0
    ip -n "$sw" link set sw0 mtu "$PHY_MTU" up
    for ((i = 1; i <= H; i++)); do
      ip -n "$sw" link add "h$i" mtu "$PHY_MTU" type veth peer name phy0 netns "$(ns_of "h$i")"
      ip -n "$sw" link set "h$i" master sw0 up
    done
  fi
  for ((i = 1; i <= H; i++)); do
    hns="$(ns_of "h$i")"
    ip -n "$hns" link set phy0 mtu "$PHY_MTU" up
    ip -n "$hns" addr add "${HOST_NET}.$i/24" dev phy0
  done

  # 3. per-host overlay as Flannel's vxlan backend makes it: a VXLAN device with the host's
  # subnet .0 address, a route to every other host's /24 via that host's .0 (onlink), a
  # permanent neighbour entry for it and a forwarding entry to its underlay address.
  [[ -x "$REPO_DIR/build/cni/freeflow" ]] || die "build/cni/freeflow is missing: run 'npm run build' first"
  mkdir -p -- "$(tb_dir)/cni"
  # The cluster key every router of this testbed proves to its peers (root-only, like on a real host).
  (umask 077 && node "$REPO_DIR/bin/freeflow.js" keygen > "$(tb_dir)/cluster.key")
  for ((i = 1; i <= H; i++)); do
    hns="$(ns_of "h$i")"
    ip netns exec "$hns" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
    ip -n "$hns" link add "$OVL_DEV" type vxlan id "$VXLAN_ID" dstport "$VXLAN_PORT" \
      local "${HOST_NET}.$i" dev phy0 nolearning
    ip -n "$hns" link set "$OVL_DEV" address "$(ovl_mac "$i")" mtu "$OVL_MTU" up
    ip -n "$hns" addr add "10.244.$i.0/32" dev "$OVL_DEV"
    for ((j = 1; j <= H; j++)); do
      ((j == i)) && continue
      ip -n "$hns" route add "10.244.$j.0/24" via "10.244.$j.0" dev "$OVL_DEV" onlink
      ip -n "$hns" neigh replace "10.244.$j.0" lladdr "$(ovl_mac "$j")" dev "$OVL_DEV" nud permanent
      bridge -n "$hns" fdb append "$(ovl_mac "$j")" dev "$OVL_DEV" dst "${HOST_NET}.$j"
    done

    # 4. containers, through the CNI chain run in the host's namespace (the bridge plugin
    # makes its bridge and veth ends where it runs)
    mkdir -p -- "$(tb_dir)/h$i"
    write_conflist "$i"
    for ((k = 1; k <= C; k++)); do
      c="c$i$k"
      cns="$(ns_of "$c")"
      local got
      got="$(ip netns exec "$hns" node "$REPO_DIR/scripts/cni-chain.mjs" ADD "$(tb_dir)/cni/h$i.conflist" \
        "$FF_TB-$c" "/run/netns/$cns" eth0)"
      [[ "$got" == *"\"$(node_ip "$c")/24\""* ]] || die "CNI gave $c an unexpected address: $got"
    done
  done

  trap - ERR INT TERM
  set +E
  log "up: $H host(s) x $C container(s); sockets under $(tb_dir)"
  do_list
}

# ---------------------------------------------------------------- misc

do_list() {
  local n
  for n in $(our_nodes); do
    echo "$n $(node_role "$n") $(node_ip "$n")"
  done
}

do_env() {
  local line
  need_node "$1"
  local k v
  while IFS= read -r line; do
    k="${line%%=*}" v="${line#*=}"
    if [[ "$v" =~ ^[A-Za-z0-9_./,:@%+=-]*$ ]]; then
      echo "export $k=$v"
    else
      echo "export $k='${v//\'/\'\\\'\'}'"
    fi
  done < <(node_vars "$1")
}

do_exec() {
  local node="${1:-}" vars=()
  [[ $# -ge 2 ]] || usage
  need_node "$node"
  shift
  mapfile -t vars < <(node_vars "$node")
  exec ip netns exec "$(ns_of "$node")" env "${vars[@]}" "$@"
}

do_counters() {
  local node="${1:-}" dev="${2:-$OVL_DEV}" out
  need_node "$node"
  [[ "$(node_role "$node")" == host ]] || die "counters: '$node' is not a host node"
  [[ "$dev" =~ ^[A-Za-z0-9_.-]+$ ]] || die "counters: bad device name '$dev'"
  out="$(ip netns exec "$(ns_of "$node")" cat \
    "/sys/class/net/$dev/statistics/tx_bytes" "/sys/class/net/$dev/statistics/rx_bytes")" || die "counters: no device '$dev' on '$node'"
  echo $out
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  up)       need_root; do_up ;;
  down)     need_root; do_down ;;
  list)     do_list ;;
  env)      do_env "${1:-}" ;;
  exec)     need_root; do_exec "$@" ;;
  counters) need_root; do_counters "${1:-}" "${2:-}" ;;
  -h|--help|help) usage ;;
  *) usage ;;
esac
