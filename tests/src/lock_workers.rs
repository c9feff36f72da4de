//! Driving `lock_worker` processes: several processes sharing one Redis call the same
//! `#[cached(lock)]` function on a cold key at the same moment. Used by the stampede tests
//! and the stampede latency bench (which pass the worker's path, `env!("CARGO_BIN_EXE_lock_worker")`).

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

/// One running `lock_worker` process (or `rate_worker`, which speaks the same protocol).
pub struct LockWorker {
    /// The process, for killing it mid-load.
    pub child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl LockWorker {
    /// Starts the worker at `exe` against `redis_url` with extra environment, and waits
    /// until it is connected and ready to call.
    ///
    /// # Panics
    ///
    /// If the worker cannot start or does not report ready.
    pub fn spawn(exe: &str, redis_url: &str, env: &[(&str, &str)]) -> LockWorker {
        let mut command = Command::new(exe);
        command.env("REDIS_URL", redis_url).stdin(Stdio::piped()).stdout(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start lock_worker");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("worker output");
        assert_eq!(line.trim(), "ready", "worker did not start");
        LockWorker { child, stdin, stdout }
    }

    /// Tells the worker to start calling.
    ///
    /// # Panics
    ///
    /// If the worker is gone.
    pub fn go(&mut self) {
        self.stdin.write_all(b"go\n").expect("signal worker");
        self.stdin.flush().expect("signal worker");
    }

    /// Every caller's latency (from the start signal) and outcome (`ok:<value>` or
    /// `err:<message>`), once the worker exits.
    ///
    /// # Panics
    ///
    /// If the worker fails.
    pub fn results(mut self) -> Vec<(Duration, String)> {
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

/// One stampede: `processes` workers of `callers` callers each on the cold key
/// `report:<key_id>`, whose body sleeps `body_ms`.
pub struct Stampede {
    /// Every caller's latency, sorted.
    pub latencies: Vec<Duration>,
    /// Every caller's outcome.
    pub outcomes: Vec<String>,
}

impl Stampede {
    /// Runs the stampede and collects every caller's result.
    pub fn run(
        exe: &str,
        redis_url: &str,
        processes: usize,
        callers: usize,
        body_ms: u64,
        key_id: u64,
    ) -> Stampede {
        let (callers, body_ms, key_id) =
            (callers.to_string(), body_ms.to_string(), key_id.to_string());
        let env = [
            ("CALLERS", callers.as_str()),
            ("BODY_MS", body_ms.as_str()),
            ("KEY_ID", key_id.as_str()),
        ];
        let mut workers: Vec<LockWorker> =
            (0..processes).map(|_| LockWorker::spawn(exe, redis_url, &env)).collect();
        workers.iter_mut().for_each(LockWorker::go);
        let (mut latencies, mut outcomes) = (Vec::new(), Vec::new());
        for worker in workers {
            for (latency, outcome) in worker.results() {
                latencies.push(latency);
                outcomes.push(outcome);
            }
        }
        latencies.sort();
        Stampede { latencies, outcomes }
    }

    /// The caller latency at quantile `q` (0.5: median).
    pub fn quantile(&self, q: f64) -> Duration {
        self.latencies[((self.latencies.len() - 1) as f64 * q).round() as usize]
    }
}
