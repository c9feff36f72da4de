#!/usr/bin/env bash
# The `hot` bench over a real network hop: redis-server runs in a network namespace of its
# own, reached over a veth pair (10.200.0.1 here, 10.200.0.2 there) whose two ends delay
# every packet with `tc netem` (half the added round trip each way). Each delay in
# NETNS_DELAYS (default "0ms 0.25ms 1ms": no delay is the veth hop alone) runs the bench
# once against a flushed server. Needs root, `ip`, `tc` and `redis-server`; without them it
# says why and exits 0. The namespace, the veth pair and the server are removed on exit.
#
# Where the kernel has no `sch_netem` (`tc qdisc ... netem` says "Specified qdisc kind is
# unknown"), or with NETNS_PROXY=1, the delay comes from a latency proxy instead (a TCP
# forwarder holding each chunk half the round trip each way, `tests/src/latency_proxy.rs`):
# the bench runs with HOT_DELAY=<delay>, so the proxy runs inside it (OS threads), on this
# side of the veth pair; the demo connects through the standalone `latency_proxy` binary.
# The hop is then the veth pair plus the proxy: see the proxy's notes on what it does not
# model (no bandwidth bound, jitter or loss; delay per chunk, not per packet) and on its CPU,
# which it takes from the same cores.
#
#   bash cache-runtime/benches/netns.sh                         # every part of `hot`
#   NETNS_DELAYS="1ms" HOT_PARTS=hit,miss bash cache-runtime/benches/netns.sh
#   NETNS_DEMO=1 HOT_PARTS=hit bash cache-runtime/benches/netns.sh   # and the demo's p50/p99
#
# The demo over the hop (NETNS_DEMO=1) is a release build of the `vehicles` example, then
# `vehicles demo` with REDIS_URL pointing into the namespace (through the proxy if used).
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

proxy=${NETNS_PROXY:-0}
if [ "$proxy" != 1 ] && ! tc qdisc replace dev "$host" root netem delay 0ms 2>/dev/null; then
    echo "tc netem is unavailable here (no sch_netem kernel module): the delay comes from the latency proxy"
    proxy=1
fi
tc qdisc del dev "$host" root 2>/dev/null || true
if [ "$proxy" = 1 ] && [ "${NETNS_DEMO:-0}" = 1 ]; then
    cargo build --release -p cache-tests --bin latency_proxy
fi
proxy_pid=""
stop_proxy() {
    if [ -n "$proxy_pid" ]; then kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true; fi
    proxy_pid=""
}
trap 'stop_proxy; cleanup' EXIT

for delay in ${NETNS_DELAYS:-0ms 0.25ms 1ms}; do
    half=$(awk -v d="${delay%ms}" 'BEGIN { printf "%.3fms", d / 2 }')
    delay_env=()
    if [ "$proxy" = 1 ]; then
        delay_env=(HOT_DELAY="$delay")
        echo "== latency proxy adding $delay per round trip ($half each way), over the veth hop"
    else
        if ! tc qdisc replace dev "$host" root netem delay "$half" 2>/dev/null ||
            ! ip netns exec "$ns" tc qdisc replace dev "$peer" root netem delay "$half" 2>/dev/null; then
            skip "tc netem failed on the veth pair"
        fi
        rtt=$(ping -c 20 -i 0.01 -q 10.200.0.2 2>/dev/null | awk -F/ '/rtt|round-trip/ { print $5 " ms" }' || true)
        echo "== netem delay $delay added per round trip ($half each way); ping mean RTT ${rtt:-unknown}"
    fi
    redis-cli -h 10.200.0.2 -p "$port" flushall >/dev/null
    if [ -n "${HOT_BIN:-}" ]; then
        env "${delay_env[@]}" HOT_REDIS_URL="$url" "$HOT_BIN"
    else
        env "${delay_env[@]}" HOT_REDIS_URL="$url" cargo bench -p cache-runtime --bench hot
    fi
    if [ "${NETNS_DEMO:-0}" = 1 ]; then
        redis-cli -h 10.200.0.2 -p "$port" flushall >/dev/null
        demo_url="$url"
        if [ "$proxy" = 1 ]; then
            # The proxy runs until its stdin closes: a fifo held open by this shell.
            fifo="$dir/proxy.in"
            rm -f "$fifo"
            mkfifo "$fifo"
            "${CARGO_TARGET_DIR:-target}/release/latency_proxy" 127.0.0.1:6390 "10.200.0.2:$port" "$delay" <"$fifo" &
            proxy_pid=$!
            exec 9>"$fifo"
            for _ in $(seq 50); do
                redis-cli -p 6390 ping >/dev/null 2>&1 && break
                sleep 0.1
            done
            demo_url="redis://127.0.0.1:6390/"
        fi
        REDIS_URL="$demo_url" cargo run --release -p examples --bin vehicles -- demo
        if [ -n "$proxy_pid" ]; then
            exec 9>&-
            wait "$proxy_pid" 2>/dev/null || true
            proxy_pid=""
        fi
    fi
done
