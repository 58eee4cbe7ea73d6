//! The machine the figures come from.

use std::time::Instant;

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
    /// How evenly the machine runs a fixed piece of CPU work at the start.
    pub jitter: Jitter,
}

/// The same few microseconds of arithmetic, timed many times with nothing
/// else running: what the machine itself adds to a microsecond-scale tail
/// (a virtual machine's CPU shared with other guests, or with a busy
/// sibling hyperthread, runs some of them far slower). A p99 of a few
/// microseconds (the Lua hook's) can be no steadier than this.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Jitter {
    pub slices: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Share of slices that took over 1.5 times the median, in percent.
    pub slow_percent: f64,
}

impl Jitter {
    const SLICES: usize = 20_000;
    /// About 3 µs on the machines here (a Lua hook call's scale).
    const STEPS: u32 = 1_000;

    fn measure() -> Self {
        let mut acc = 1.0f64;
        let mut times: Vec<f64> = (0..Self::SLICES)
            .map(|_| {
                let started = Instant::now();
                for _ in 0..Self::STEPS {
                    // A dependent chain the compiler cannot fold or vectorise.
                    acc = std::hint::black_box(acc * 1.000_000_1 + 0.5);
                }
                started.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        std::hint::black_box(acc);
        times.sort_by(f64::total_cmp);
        let p50 = times[Self::SLICES / 2];
        let slow = Self::SLICES - times.partition_point(|&t| t <= 1.5 * p50);
        let slow_percent = slow as f64 * 100.0 / Self::SLICES as f64;
        Jitter { slices: Self::SLICES, p50_us: p50, p99_us: times[Self::SLICES * 99 / 100], slow_percent }
    }
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
            jitter: Jitter::measure(),
        }
    }
}
