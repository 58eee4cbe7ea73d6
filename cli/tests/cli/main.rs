//! Runs the real `fila` binary against the real `fila-server` binary
//! (started by `fila_testkit::TestServer`; build it first with
//! `cargo build -p fila-server` when testing this crate alone).

mod admin;
mod enqueue;
mod failures;
mod fairness;
mod help;
mod lease;
mod observe;
mod queue;
mod scripts;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest any single `fila` run may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// What a finished `fila` run left behind.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts a failure with exit status `code` and exactly one line on
    /// standard error, which is returned (without `fila: ` and the newline).
    #[track_caller]
    pub fn failed(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "exit status; {self:?}");
        assert!(self.stderr.ends_with('\n') && self.stderr.lines().count() == 1, "one line on stderr: {self:?}");
        self.stderr.trim_end().strip_prefix("fila: ").unwrap_or_else(|| panic!("'fila: ' prefix: {self:?}"))
    }
}

/// The `fila` binary, pointed at one broker.
pub struct Fila {
    pub addr: String,
}

impl Fila {
    pub fn at(addr: impl Into<String>) -> Self {
        Fila { addr: addr.into() }
    }

    pub fn of(server: &fila_testkit::TestServer) -> Self {
        Fila::at(server.addr.clone())
    }

    /// `fila --addr ADDR ARGS...`, with no `FILA_*` variables from the
    /// environment and an empty standard input.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fila"));
        command
            .env_remove("FILA_ADDR")
            .env_remove("FILA_OUTPUT")
            .args(["--addr", &self.addr])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        finish(self.command(args).spawn().expect("fila runs"))
    }

    /// Runs with `input` on standard input.
    pub fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        let mut child = self.command(args).stdin(Stdio::piped()).spawn().expect("fila runs");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        drop(stdin);
        finish(child)
    }

    /// Runs, asserts success with nothing on standard error, returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!((run.code, run.stderr.as_str()), (0, ""), "fila {args:?}: {run:?}");
        run.stdout
    }

    /// Runs with `--output json` and parses the single JSON document printed.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> Value {
        let lines = self.json_lines(args);
        assert_eq!(lines.len(), 1, "one JSON document from fila {args:?}: {lines:?}");
        lines.into_iter().next().unwrap()
    }

    /// Runs with `--output json` and parses every line.
    #[track_caller]
    pub fn json_lines(&self, args: &[&str]) -> Vec<Value> {
        let args: Vec<&str> = args.iter().copied().chain(["--output", "json"]).collect();
        let stdout = self.ok(&args);
        stdout.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect()
    }

    /// `fila queue inspect NAME --output json`.
    #[track_caller]
    pub fn inspect(&self, queue: &str) -> Value {
        self.json(&["queue", "inspect", queue])
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).unwrap();
        String::from_utf8(bytes).expect("fila prints UTF-8")
    })
}

/// Waits for a child started by [`Fila::command`] (at most [`RUN_TIMEOUT`]),
/// reading its output meanwhile.
pub fn finish(mut child: Child) -> Run {
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RUN_TIMEOUT {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("fila did not finish within {RUN_TIMEOUT:?}; stdout so far: {}", stdout.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code().expect("fila exited (not killed by a signal)"),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Polls `fila queue inspect` until `check` holds on the queue's JSON.
#[track_caller]
pub fn wait_for_queue(fila: &Fila, queue: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let info = fila.inspect(queue);
        if check(&info) {
            return info;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "queue '{queue}' never got {what}: {info}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback address where nothing listens.
pub fn dead_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    addr
}
