#!/usr/bin/env bash
# The `hot` bench over a real network hop: redis-server runs in a network namespace of its
# own, reached over a veth pair (10.200.0.1 here, 10.200.0.2 there) whose two ends delay
# every packet with `tc netem` (half the added round trip each way). Each delay in
# NETNS_DELAYS (default "0ms 0.25ms 1ms": no delay is the veth hop alone) runs the bench
# once against a flushed server. Needs root, `ip`, `tc` and `redis-server`; without them it
# says why and exits 0. The namespace, the veth pair and the server are removed on exit.
#
#   bash cache-runtime/benches/netns.sh                         # every part of `hot`
#   NETNS_DELAYS="1ms" HOT_PARTS=hit,miss bash cache-runtime/benches/netns.sh
#
# Hooks for the parts other work adds: set HOT_PARTS to the part names once `hot` has them
# (tag invalidation, a batch of 100 keys); the demo's p50/p99 over the hop runs with
# NETNS_DEMO=1 (a release build of the `vehicles` example, then `vehicles demo` with
# REDIS_URL pointing into the namespace).
set -euo pipefail

skip() {
    echo "netns harness skipped: $*"
    exit 0
}

[ "$(id -u)" = 0 ] || skip "needs root (network namespaces and tc)"
command -v ip >/dev/null || skip "no 'ip' (iproute2)"
command -v tc >/dev/null || skip "no 'tc' (iproute2)"
command -v redis-server >/dev/null || skip "no redis-server on PATH"
command -v redis-cli >/dev/null || skip "no redis-cli on PATH"

ns="cache-bench-$$"
host="vcbh$$"
peer="vcbp$$"
port=6399
url="redis://10.200.0.2:$port/"
server=""

cleanup() {
    if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    ip link del "$host" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT

ip netns add "$ns" || skip "cannot create a network namespace"
ip link add "$host" type veth peer name "$peer"
ip link set "$peer" netns "$ns"
ip addr add 10.200.0.1/24 dev "$host"
ip link set "$host" up
ip netns exec "$ns" ip addr add 10.200.0.2/24 dev "$peer"
ip netns exec "$ns" ip link set "$peer" up
ip netns exec "$ns" ip link set lo up

dir=$(mktemp -d)
ip netns exec "$ns" redis-server --bind 10.200.0.2 --port "$port" --save '' --appendonly no \
    --protected-mode no --dir "$dir" --logfile "$dir/redis.log" &
server=$!
for _ in $(seq 50); do
    redis-cli -h 10.200.0.2 -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
redis-cli -h 10.200.0.2 -p "$port" ping >/dev/null || skip "redis-server in the namespace did not answer"

cd "$(dirname "$0")/../.."
# HOT_BIN: an already built `hot` bench executable (else cargo builds and runs it).
if [ -z "${HOT_BIN:-}" ]; then
    cargo bench -p cache-runtime --bench hot --no-run
fi

for delay in ${NETNS_DELAYS:-0ms 0.25ms 1ms}; do
    half=$(awk -v d="${delay%ms}" 'BEGIN { printf "%.3fms", d / 2 }')
    if ! tc qdisc replace dev "$host" root netem delay "$half" 2>/dev/null ||
        ! ip netns exec "$ns" tc qdisc replace dev "$peer" root netem delay "$half" 2>/dev/null; then
        skip "tc netem is unavailable here (kernel module sch_netem: try 'modprobe sch_netem')"
    fi
    redis-cli -h 10.200.0.2 -p "$port" flushall >/dev/null
    rtt=$(ping -c 20 -i 0.01 -q 10.200.0.2 2>/dev/null | awk -F/ '/rtt|round-trip/ { print $5 " ms" }' || true)
    echo "== netem delay $delay added per round trip ($half each way); ping mean RTT ${rtt:-unknown}"
    if [ -n "${HOT_BIN:-}" ]; then
        HOT_REDIS_URL="$url" "$HOT_BIN"
    else
        HOT_REDIS_URL="$url" cargo bench -p cache-runtime --bench hot
    fi
    if [ "${NETNS_DEMO:-0}" = 1 ]; then
        redis-cli -h 10.200.0.2 -p "$port" flushall >/dev/null
        REDIS_URL="$url" cargo run --release -p examples --bin vehicles -- demo
    fi
done
