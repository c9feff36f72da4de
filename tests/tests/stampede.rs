//! Stampede protection across processes: several `lock_worker` processes share one Redis
//! and call the same `#[cached(lock)]` function on a cold key at the same moment.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use cache_tests::RedisServer;

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// Starts a worker and waits until it is ready to call.
fn spawn_worker(server: &RedisServer, env: &[(&str, &str)]) -> Worker {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lock_worker"));
    command.env("REDIS_URL", server.url()).stdin(Stdio::piped()).stdout(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("start lock_worker");
    let stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("worker output");
    assert_eq!(line.trim(), "ready", "worker did not start");
    Worker { child, stdin, stdout }
}

impl Worker {
    fn go(&mut self) {
        self.stdin.write_all(b"go\n").expect("signal worker");
        self.stdin.flush().expect("signal worker");
    }

    /// Every caller's (latency, outcome), after the worker exits.
    fn results(mut self) -> Vec<(Duration, String)> {
        let mut results = Vec::new();
        for line in (&mut self.stdout).lines() {
            let line = line.expect("worker output");
            let (micros, outcome) = line.split_once(' ').expect("`<micros> <outcome>`");
            results
                .push((Duration::from_micros(micros.parse().expect("micros")), outcome.to_owned()));
        }
        assert!(self.child.wait().expect("worker exit").success(), "worker failed");
        results
    }
}

fn counter(server: &RedisServer, key: &str) -> u64 {
    let mut connection = server.client().get_connection().expect("connect");
    redis::cmd("GET").arg(key).query::<Option<u64>>(&mut connection).expect("GET").unwrap_or(0)
}

fn exists(server: &RedisServer, key: &str) -> bool {
    let mut connection = server.client().get_connection().expect("connect");
    redis::cmd("EXISTS").arg(key).query::<u64>(&mut connection).expect("EXISTS") == 1
}

#[test]
fn four_processes_of_a_hundred_callers_run_the_body_once() {
    const BODY_MS: u64 = 200;
    let server = RedisServer::start();
    let mut workers: Vec<Worker> =
        (0..4).map(|_| spawn_worker(&server, &[("CALLERS", "100"), ("BODY_MS", "200")])).collect();
    workers.iter_mut().for_each(Worker::go);
    let mut latencies: Vec<Duration> = Vec::new();
    for worker in workers {
        for (latency, outcome) in worker.results() {
            assert_eq!(outcome, "ok:report_7");
            latencies.push(latency);
        }
    }
    assert_eq!(latencies.len(), 400);
    assert_eq!(
        counter(&server, "lockworker:runs"),
        1,
        "the body must run once across all processes"
    );
    latencies.sort();
    let body = Duration::from_millis(BODY_MS);
    let median = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "4 processes x 100 callers, body {BODY_MS} ms: median {median:?} (+{:?}), p99 {p99:?} (+{:?})",
        median.saturating_sub(body),
        p99.saturating_sub(body)
    );
    assert!(
        median <= body + Duration::from_millis(25),
        "median caller took {median:?} for a {body:?} body"
    );
}

#[test]
fn a_killed_holder_is_taken_over_after_its_lease() {
    let server = RedisServer::start();
    // The first process takes the lease and hangs in its body; it is killed mid-load.
    let mut holder =
        spawn_worker(&server, &[("CALLERS", "1"), ("BODY_MS", "60000"), ("LEASE_MS", "600")]);
    holder.go();
    let started = Instant::now();
    while !exists(&server, "lockworker:started") {
        assert!(started.elapsed() < Duration::from_secs(5), "holder never started its body");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut waiter =
        spawn_worker(&server, &[("CALLERS", "10"), ("BODY_MS", "50"), ("LEASE_MS", "600")]);
    waiter.go();
    std::thread::sleep(Duration::from_millis(100));
    holder.child.kill().expect("kill holder");
    holder.child.wait().expect("reap holder");
    let results = waiter.results();
    assert!(results.iter().all(|(_, outcome)| outcome == "ok:report_7"), "{results:?}");
    assert_eq!(
        counter(&server, "lockworker:runs"),
        2,
        "the waiter's process loads once after the holder died"
    );
    let slowest = results.iter().map(|(latency, _)| *latency).max().unwrap();
    // Lease (600 ms, renewed until the kill) + the waiter's own 50 ms body, with slack.
    assert!(slowest < Duration::from_secs(3), "takeover took {slowest:?}");
}

#[test]
fn a_failing_body_stores_nothing_and_no_waiter_hangs() {
    let server = RedisServer::start();
    let env = [("CALLERS", "20"), ("BODY_MS", "100"), ("FAIL", "1"), ("WAIT_MS", "2000")];
    let mut workers: Vec<Worker> = (0..3).map(|_| spawn_worker(&server, &env)).collect();
    let started = Instant::now();
    workers.iter_mut().for_each(Worker::go);
    for worker in workers {
        let results = worker.results();
        assert_eq!(results.len(), 20);
        assert!(results.iter().all(|(_, outcome)| outcome.starts_with("err:")), "{results:?}");
    }
    // Each process tries in turn (3 x 100 ms); nobody waits for the 2 s limit.
    assert!(started.elapsed() < Duration::from_secs(3), "waiters took {:?}", started.elapsed());
    assert!(!exists(&server, "lockworker:report:7"), "an error must not be cached");
    assert!(counter(&server, "lockworker:runs") <= 3 * 20);
}
