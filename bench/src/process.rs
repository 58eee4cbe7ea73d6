//! Child processes of the suite (the brokers) and what we read about them
//! from /proc.

use std::future::Future;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A port on loopback that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// A broker process, stopped when dropped so that a failing run leaves
/// nothing behind: SIGKILL, or SIGTERM first for programs that run their
/// server in a child of their own (RabbitMQ's start script).
pub struct Process {
    name: String,
    child: Child,
    graceful: bool,
}

/// How long a graceful stop may take before SIGKILL.
const STOP_LIMIT: Duration = Duration::from_secs(20);

impl Process {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self> {
        let open = || std::fs::OpenOptions::new().create(true).append(true).open(log);
        let stdout = open().with_context(|| format!("opening {}", log.display()))?;
        let stderr = open()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        Ok(Process { name: name.to_owned(), child, graceful: false })
    }

    /// Stops with SIGTERM (then SIGKILL after a while) when dropped.
    pub fn stop_gracefully(mut self) -> Self {
        self.graceful = true;
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("{} exited: {status}", self.name),
            None => Ok(()),
        }
    }

    /// Resident memory now, in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        rss_bytes(self.pid())
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(mut self) -> Result<()> {
        self.kill_now()
    }

    fn kill_now(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill().with_context(|| format!("killing {}", self.name))?;
        }
        self.child.wait()?;
        Ok(())
    }

    fn terminate(&mut self) -> Result<()> {
        let pid = self.pid().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().context("running kill")?;
        let started = Instant::now();
        while started.elapsed() < STOP_LIMIT {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_now()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = if self.graceful { self.terminate() } else { self.kill_now() };
    }
}

/// CPU time a process has used so far, all its threads together (exited
/// ones included, from `/proc/<pid>/stat`: user and system time, in clock
/// ticks), and, for each of `thread_prefixes`, its live threads whose
/// names start with it (from each `/proc/<pid>/task/<tid>/schedstat`, in
/// nanoseconds).
pub fn cpu_times(pid: u32, thread_prefixes: &[&str]) -> Result<(Duration, Vec<Duration>)> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The fields after the command name, which is in parentheses and may
    // hold spaces: the state first (field 3), utime and stime 11 and 12
    // further (fields 14 and 15).
    let after_name = stat.rfind(')').with_context(|| format!("no command name in {path}"))? + 2;
    let fields: Vec<&str> = stat[after_name..].split(' ').collect();
    let field = |i: usize| {
        fields.get(i).and_then(|f| f.parse::<u64>().ok()).with_context(|| format!("field {} of {path}", i + 3))
    };
    let ticks = field(11)? + field(12)?;
    // SAFETY: sysconf only reads a system constant.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(ticks_per_second > 0, "sysconf(_SC_CLK_TCK) failed");
    let process = Duration::from_nanos(ticks * 1_000_000_000 / ticks_per_second as u64);
    let mut threads = vec![Duration::ZERO; thread_prefixes.len()];
    let tasks = format!("/proc/{pid}/task");
    for task in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
        let dir = task?.path();
        // A thread may exit between the listing and the reads.
        let Ok(name) = std::fs::read_to_string(dir.join("comm")) else { continue };
        let Some(group) = thread_prefixes.iter().position(|prefix| name.starts_with(prefix)) else { continue };
        let Ok(schedstat) = std::fs::read_to_string(dir.join("schedstat")) else { continue };
        let on_cpu = schedstat.split(' ').next().and_then(|ns| ns.parse().ok());
        threads[group] +=
            Duration::from_nanos(on_cpu.with_context(|| format!("malformed schedstat in {}", dir.display()))?);
    }
    Ok((process, threads))
}

/// VmRSS of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .with_context(|| format!("no VmRSS in {path}"))?;
    Ok(kib * 1024)
}

/// How long one readiness attempt may take: a client whose connection
/// attempt hangs (it happened with lapin against a booting RabbitMQ) is
/// given up and tried again.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(5);

/// Calls `attempt` until it succeeds, `process` exits, or `limit` passes;
/// returns the success and how long it took.
pub async fn wait_until_serving<T, F, Fut>(
    process: &mut Process,
    limit: Duration,
    mut attempt: F,
) -> Result<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let started = Instant::now();
    loop {
        let error = match tokio::time::timeout(ATTEMPT_LIMIT, attempt()).await {
            Ok(Ok(value)) => return Ok((value, started.elapsed())),
            Ok(Err(error)) => error,
            Err(_) => anyhow::anyhow!("no answer within {ATTEMPT_LIMIT:?}"),
        };
        process.check_running()?;
        if started.elapsed() > limit {
            return Err(error.context(format!("{} was not serving after {limit:?}", process.name)));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The first line a command prints, for versions.
pub fn first_line_of(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    let text = if output.stdout.is_empty() { output.stderr } else { output.stdout };
    Ok(String::from_utf8_lossy(&text).lines().next().unwrap_or_default().trim().to_owned())
}
