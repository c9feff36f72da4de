//! Stampede protection across processes: several `lock_worker` processes share one Redis
//! and call the same `#[cached(lock)]` function on a cold key at the same moment.

use std::time::{Duration, Instant};

use cache_tests::lock_workers::{LockWorker, Stampede};
use cache_tests::RedisServer;

const WORKER: &str = env!("CARGO_BIN_EXE_lock_worker");

fn spawn_worker(server: &RedisServer, env: &[(&str, &str)]) -> LockWorker {
    LockWorker::spawn(WORKER, &server.url(), env)
}

/// The tests here each run several worker processes; run them one at a time so one test's
/// processes do not take the other's CPU (the latency test measures milliseconds).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
    let _exclusive = exclusive();
    const BODY_MS: u64 = 200;
    let server = RedisServer::start();
    let stampede = Stampede::run(WORKER, &server.url(), 4, 100, BODY_MS, 7);
    assert_eq!(stampede.outcomes.len(), 400);
    assert!(
        stampede.outcomes.iter().all(|outcome| outcome == "ok:report_7"),
        "{:?}",
        stampede.outcomes
    );
    assert_eq!(
        counter(&server, "lockworker:runs:7"),
        1,
        "the body must run once across all processes"
    );
    let body = Duration::from_millis(BODY_MS);
    let (median, p99) = (stampede.quantile(0.5), stampede.quantile(0.99));
    eprintln!(
        "4 processes x 100 callers, body {BODY_MS} ms: median {median:?} (+{:?}), p99 {p99:?} (+{:?})",
        median.saturating_sub(body),
        p99.saturating_sub(body)
    );
    // Waiters are woken by a message, not by polling: even on a loaded machine the median
    // caller is far from the 100 ms sleeps of polling locks. The figure itself (goal: within
    // 25 ms) is measured by `cargo bench -p cache-tests --bench stampede_latency`.
    assert!(
        median <= body + Duration::from_millis(100),
        "median caller took {median:?} for a {body:?} body"
    );
}

#[test]
fn a_killed_holder_is_taken_over_after_its_lease() {
    let _exclusive = exclusive();
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
        counter(&server, "lockworker:runs:7"),
        2,
        "the waiter's process loads once after the holder died"
    );
    let slowest = results.iter().map(|(latency, _)| *latency).max().unwrap();
    // Lease (600 ms, renewed until the kill) + the waiter's own 50 ms body, with slack.
    assert!(slowest < Duration::from_secs(3), "takeover took {slowest:?}");
}

#[test]
fn a_failing_body_stores_nothing_and_no_waiter_hangs() {
    let _exclusive = exclusive();
    let server = RedisServer::start();
    let env = [("CALLERS", "20"), ("BODY_MS", "100"), ("FAIL", "1"), ("WAIT_MS", "2000")];
    let mut workers: Vec<LockWorker> = (0..3).map(|_| spawn_worker(&server, &env)).collect();
    let started = Instant::now();
    workers.iter_mut().for_each(LockWorker::go);
    for worker in workers {
        let results = worker.results();
        assert_eq!(results.len(), 20);
        assert!(results.iter().all(|(_, outcome)| outcome.starts_with("err:")), "{results:?}");
    }
    // Each process tries in turn (3 x 100 ms); nobody waits for the 2 s limit.
    assert!(started.elapsed() < Duration::from_secs(3), "waiters took {:?}", started.elapsed());
    assert!(!exists(&server, "lockworker:report:7"), "an error must not be cached");
    // Errors are not shared (each caller gets its own body's result): every caller ran the
    // body exactly once, none was retried.
    assert_eq!(counter(&server, "lockworker:runs:7"), 3 * 20, "one body run per caller");
    // Stampede protection: in each process the flight's leader runs first (its followers
    // only run after its body failed), and it runs holding the lease, so the three leaders'
    // runs (each process's first run) never overlap.
    let mut leaders = lease_holders(&server, "lockworker:log:7");
    assert_eq!(leaders.len(), 3, "one leader per process: {leaders:?}");
    leaders.sort();
    for pair in leaders.windows(2) {
        let ((_, first_end, first), (second_start, _, second)) = (pair[0], pair[1]);
        assert!(
            first_end < second_start,
            "process {second}'s leader started its body while process {first}'s ran: {leaders:?}"
        );
    }
}

/// From a worker's run log (`<pid> start` / `<pid> end`, in Redis's order): each process's
/// first run, as (position of its start, position of its end, pid).
fn lease_holders(server: &RedisServer, log: &str) -> Vec<(usize, usize, u32)> {
    let mut connection = server.client().get_connection().expect("connect");
    let log: Vec<String> =
        redis::cmd("LRANGE").arg(log).arg(0).arg(-1).query(&mut connection).expect("LRANGE");
    let mut firsts: Vec<(usize, Option<usize>, u32)> = Vec::new();
    for (position, line) in log.iter().enumerate() {
        let (pid, event) = line.split_once(' ').expect("`<pid> <event>`");
        let pid: u32 = pid.parse().expect("pid");
        match (firsts.iter_mut().find(|(_, _, p)| *p == pid), event) {
            (None, "start") => firsts.push((position, None, pid)),
            (Some((_, end @ None, _)), "end") => *end = Some(position),
            (None, _) => panic!("{pid} ended a run it never started: {log:?}"),
            _ => {}
        }
    }
    firsts
        .into_iter()
        .map(|(start, end, pid)| (start, end.unwrap_or_else(|| panic!("{pid} never ended")), pid))
        .collect()
}
