//! A standalone [`cache_tests::LatencyProxy`]: a TCP forwarder that adds a fixed round trip
//! (half each way) between its clients and one Redis server, for programs that take a
//! `REDIS_URL` (the vehicles demo) where the kernel has no `tc netem`.
//!
//! ```text
//! cargo run --release -p cache-tests --bin latency_proxy -- <listen> <upstream> <round trip>
//! cargo run --release -p cache-tests --bin latency_proxy -- 127.0.0.1:6390 127.0.0.1:6379 1ms
//! REDIS_URL=redis://127.0.0.1:6390/ cargo run --release -p examples --bin vehicles -- demo
//! ```
//!
//! It prints `listening on <addr>` once ready, then runs until its standard input closes
//! (or it is killed), and then prints the CPU time its forwarding threads used.

use std::io::Read as _;

use cache_tests::latency_proxy::{parse_delay, LatencyProxy};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, delay] = args.as_slice() else {
        eprintln!("usage: latency_proxy <listen addr> <upstream addr> <round trip: 0, 250us, 1ms>");
        std::process::exit(2);
    };
    let parse = |addr: &str| {
        addr.parse().unwrap_or_else(|e| {
            eprintln!("latency_proxy: {addr}: {e}");
            std::process::exit(2)
        })
    };
    let Some(round_trip) = parse_delay(delay) else {
        eprintln!("latency_proxy: {delay}: not a delay (0, 250us, 0.25ms, 1ms)");
        std::process::exit(2)
    };
    let proxy =
        LatencyProxy::start(parse(listen), parse(upstream), round_trip).unwrap_or_else(|e| {
            eprintln!("latency_proxy: cannot listen on {listen}: {e}");
            std::process::exit(1)
        });
    println!("listening on {} -> {upstream}, adding {round_trip:?} per round trip", proxy.addr());
    // Runs until stdin closes (a harness holds it open, `< /dev/null` ends at once: use
    // `sleep infinity | latency_proxy ...` to keep it running under a shell).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    println!(
        "latency_proxy: {} connections, {:.3} s of CPU in its forwarding threads",
        proxy.connections(),
        proxy.cpu_time().as_secs_f64()
    );
}
