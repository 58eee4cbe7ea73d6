//! The machine the figures come from.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_gib: f64,
    pub os: String,
    pub kernel: String,
    /// /proc/loadavg's 1, 5 and 15 minute averages at the start: other work
    /// on the machine shows here.
    pub load_average: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The value of the first `key<sep>value` line of `text`.
fn field<'a>(text: &'a str, key: &str, sep: char) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(sep)?;
        (k.trim() == key).then(|| v.trim())
    })
}

impl Machine {
    pub fn describe() -> Self {
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        let os_release = read("/etc/os-release");
        let memory_kib: f64 = field(&meminfo, "MemTotal", ':')
            .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(f64::NAN);
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu: field(&cpuinfo, "model name", ':').unwrap_or("unknown CPU").to_owned(),
            memory_gib: memory_kib / (1024.0 * 1024.0),
            os: field(&os_release, "PRETTY_NAME", '=').unwrap_or("unknown OS").trim_matches('"').to_owned(),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            load_average: read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        }
    }
}
