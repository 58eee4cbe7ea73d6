//! Runs the real `fila-server` binary on a loopback port with a temporary
//! data directory. Shared by the integration tests of the server and of the
//! `fila` CLI.
//!
//! The binary is `$FILA_SERVER_BIN` if set, else `fila-server` in the
//! target directory of the running test (tests run from
//! `<target>/<profile>/deps/`). Outside the server package Cargo does not
//! build it for you: `cargo build -p fila-server` first (a workspace-wide
//! `cargo test` builds it).

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use fila_sdk::Client;

pub struct TestServer {
    child: Option<Child>,
    pub addr: String,
    /// The Prometheus endpoint's address, unless the test turned it off.
    pub metrics_addr: Option<String>,
    data_dir: PathBuf,
    extra_args: Vec<String>,
    _temp: Option<tempfile::TempDir>,
}

/// The `fila-server` binary the tests run: `$FILA_SERVER_BIN`, or the one
/// next to the running test's `deps/` directory.
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FILA_SERVER_BIN").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "FILA_SERVER_BIN is set to {}, which is not a file", path.display());
        return path;
    }
    let exe = std::env::current_exe().expect("the path of the running test");
    // <target>/<profile>/deps/<test>: the binaries live in <target>/<profile>.
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("cannot find the target directory from the test's path {}", exe.display()));
    let mut name = OsString::from("fila-server");
    name.push(std::env::consts::EXE_SUFFIX);
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "no fila-server binary at {}: build it with `cargo build -p fila-server` (same profile and target \
         directory as the tests), or point FILA_SERVER_BIN at one",
        path.display()
    );
    path
}

/// Two distinct loopback addresses that were free a moment ago (both
/// listeners are held together, so the OS cannot hand out one port twice).
fn free_addrs() -> (String, String) {
    let bind = || TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, b) = (bind(), bind());
    (a.local_addr().unwrap().to_string(), b.local_addr().unwrap().to_string())
}

/// Whether process `pid` holds the socket listening on `addr` (IPv4):
/// `/proc/net/tcp` names the listener's inode, and the process must have
/// that socket open.
fn listens_on(pid: u32, addr: &str) -> bool {
    let Ok(addr) = addr.parse::<std::net::SocketAddrV4>() else { return false };
    // The kernel prints the address as the native-endian value of its
    // network-order bytes, then the port, both in hex.
    let local = format!("{:08X}:{:04X}", u32::from_ne_bytes(addr.ip().octets()), addr.port());
    const LISTEN: &str = "0A";
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return false };
    // Columns: slot, local address, remote address, state, ..., inode (10th).
    let socket = table.lines().skip(1).find_map(|line| {
        let columns: Vec<&str> = line.split_whitespace().collect();
        let listening = *columns.get(1)? == local && *columns.get(3)? == LISTEN;
        listening.then(|| columns.get(9).map(|inode| format!("socket:[{inode}]"))).flatten()
    });
    let (Some(socket), Ok(fds)) = (socket, std::fs::read_dir(format!("/proc/{pid}/fd"))) else { return false };
    fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == socket.as_str()))
}

/// Starts tried with fresh ports when a port found free was taken by
/// something else (another test's connection) before the server bound it.
const START_ATTEMPTS: usize = 3;

impl TestServer {
    /// Starts a server with a fresh data directory.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(args: &[&str]) -> Self {
        for attempt in 1..=START_ATTEMPTS {
            let mut server = Self::prepare(args);
            match server.try_spawn().await {
                Ok(()) => return server,
                Err(_) if attempt < START_ATTEMPTS && server.log().contains("Address already in use") => continue,
                Err(error) => panic!("{error}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// A server on fresh ports with a fresh data directory, not started.
    fn prepare(args: &[&str]) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let (addr, free_metrics_addr) = free_addrs();
        // Each server gets its own metrics port unless the test picks one.
        let mut extra_args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let metrics_addr = match args.iter().position(|a| *a == "--metrics-listen") {
            Some(i) => args.get(i + 1).filter(|a| **a != "off").map(|a| a.to_string()),
            None => {
                extra_args.extend(["--metrics-listen".to_string(), free_metrics_addr.clone()]);
                Some(free_metrics_addr)
            }
        };
        TestServer {
            child: None,
            addr,
            metrics_addr,
            data_dir: temp.path().join("data"),
            extra_args,
            _temp: Some(temp),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's stderr, kept next to the data directory.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.parent().unwrap().join("server.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Starts the binary (again) on the same address and data directory and
    /// waits until it answers.
    pub async fn spawn(&mut self) {
        if let Err(error) = self.try_spawn().await {
            panic!("{error}");
        }
    }

    /// As [`TestServer::spawn`]; an early exit is an error with the log.
    async fn try_spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let child = Command::new(server_binary())
            .args(["--listen", &self.addr, "--data-dir", self.data_dir.to_str().unwrap(), "--log", "warn"])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("fila-server binary runs");
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            // Another test's server that took the port would answer too.
            if listens_on(self.pid(), &self.addr) {
                if let Ok(client) = Client::connect(self.addr.clone()).await {
                    if client.list_queues().await.is_ok() {
                        return Ok(());
                    }
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("fila-server exited during start-up: {status}"));
            }
            assert!(started.elapsed() < Duration::from_secs(30), "fila-server did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr.clone()).await.expect("connect")
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(ok.success());
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > Duration::from_secs(20) {
                child.kill().unwrap();
                panic!("fila-server did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- fila-server log ({}) ---\n{}", self.addr, self.log());
        }
    }
}

/// Waits for the next delivery or fails after `timeout`.
pub async fn next_delivery(stream: &mut fila_sdk::LeaseStream, timeout: Duration) -> fila_sdk::Delivery {
    use futures::StreamExt;
    tokio::time::timeout(timeout, stream.next())
        .await
        .expect("a delivery in time")
        .expect("stream open")
        .expect("delivery ok")
}

/// Polls `condition` until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that nothing is delivered for `wait`.
pub async fn assert_no_delivery(stream: &mut fila_sdk::LeaseStream, wait: Duration) {
    use futures::StreamExt;
    if let Ok(item) = tokio::time::timeout(wait, stream.next()).await {
        panic!("expected no delivery, got {item:?}");
    }
}

/// Every delivery that arrives until none has for `idle`.
pub async fn deliveries_until_idle(stream: &mut fila_sdk::LeaseStream, idle: Duration) -> Vec<fila_sdk::Delivery> {
    use futures::StreamExt;
    let mut deliveries = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(idle, stream.next()).await {
        deliveries.push(item.expect("delivery ok"));
    }
    deliveries
}

/// Opens a Lease stream on `queue` that is never read, enqueues `messages`
/// one call each (so each delivery is a frame of its own), and returns the
/// stream once `leased` messages are in flight. With large payloads HTTP/2
/// flow control (a 2 MiB stream window) keeps most of those deliveries
/// queued in the broker, unsent.
pub async fn stalled_reader(
    client: &Client,
    queue: &str,
    messages: Vec<fila_sdk::NewMessage>,
    leased: u64,
) -> fila_sdk::LeaseStream {
    let window = fila_sdk::LeaseOptions { max_in_flight: Some(messages.len() as u32), visibility_timeout: None };
    let stream = client.lease(queue, window).await.expect("lease stream opens");
    for message in messages {
        client.enqueue(message).await.expect("enqueued");
    }
    wait_until(Duration::from_secs(5), &format!("{leased} messages are leased"), || async {
        let queues = client.list_queues().await.expect("queues listed");
        queues.iter().any(|q| q.name == queue && q.in_flight == leased)
    })
    .await;
    stream
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_told_apart_from_another_process_on_the_port() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert!(listens_on(std::process::id(), &addr));
        let mut other = Command::new("sleep").arg("5").spawn().unwrap();
        assert!(!listens_on(other.id(), &addr), "another process does not hold this listener");
        other.kill().unwrap();
        other.wait().unwrap();
        drop(listener);
        assert!(!listens_on(std::process::id(), &addr), "nothing listens once it is closed");
    }
}
