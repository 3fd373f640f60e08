//! System calls of the receiving side, counted by the kernel: the `raw_syscalls:sys_enter`
//! tracepoint in a tracefs instance of the bench's own (so nothing else's tracing is touched),
//! filtered to the receiving threads (`common_pid` is the thread id). Only the count matters:
//! after a run the instance's per-CPU `stats` give the events written (`entries` still in the
//! buffer plus `overrun` and `dropped events` that did not fit), so no event is parsed and the
//! cost is the tracepoint's own. strace would stop the thread at every call and slow what it
//! measures.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};

const TRACEFS: &str = "/sys/kernel/tracing";

/// The bench's tracefs instance; dropping it removes it.
pub(crate) struct SyscallCounter {
    dir: PathBuf,
}

/// The calling thread's id (`/proc/thread-self` is `PID/task/TID`).
pub(crate) fn thread_id() -> Option<u32> {
    fs::read_link("/proc/thread-self")
        .ok()?
        .file_name()?
        .to_str()?
        .parse()
        .ok()
}

/// The thread ids of process `pid`.
pub(crate) fn threads_of(pid: u32) -> Vec<u32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl SyscallCounter {
    /// Creates the instance (mounting tracefs first if it is not mounted).
    pub(crate) fn new() -> anyhow::Result<Self> {
        if !Path::new(TRACEFS).join("instances").is_dir() {
            demux::testing::testbed::run(
                std::process::Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]),
            )
            .context("mounting tracefs")?;
        }
        let dir = Path::new(TRACEFS)
            .join("instances")
            .join(format!("demux-bench-{}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let counter = Self { dir };
        counter.write("tracing_on", "0")?;
        counter.write("buffer_size_kb", "1024")?;
        Ok(counter)
    }

    fn write(&self, file: &str, value: &str) -> anyhow::Result<()> {
        let path = self.dir.join(file);
        fs::write(&path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
    }

    fn event(&self, file: &str, value: &str) -> anyhow::Result<()> {
        self.write(&format!("events/raw_syscalls/sys_enter/{file}"), value)
    }

    /// Starts counting the system calls of `threads` (from zero).
    pub(crate) fn start(&self, threads: &[u32]) -> anyhow::Result<()> {
        if threads.is_empty() {
            bail!("no thread to count");
        }
        let filter: Vec<String> = threads
            .iter()
            .map(|t| format!("common_pid == {t}"))
            .collect();
        self.event("filter", &filter.join(" || "))?;
        self.event("enable", "1")?;
        // Empties the buffers and their counters.
        self.write("trace", "")?;
        self.write("tracing_on", "1")
    }

    /// Stops counting; returns the system calls counted since `start`.
    pub(crate) fn stop(&self) -> anyhow::Result<u64> {
        self.write("tracing_on", "0")?;
        let mut total = 0;
        for entry in fs::read_dir(self.dir.join("per_cpu"))? {
            let stats = fs::read_to_string(entry?.path().join("stats"))?;
            for line in stats.lines() {
                let mut parts = line.splitn(2, ':');
                let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if matches!(name.trim(), "entries" | "overrun" | "dropped events") {
                    total += value.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
        self.event("enable", "0")?;
        self.event("filter", "0")?;
        Ok(total)
    }
}

impl Drop for SyscallCounter {
    fn drop(&mut self) {
        let _ = self.write("tracing_on", "0");
        let _ = self.event("enable", "0");
        let _ = fs::remove_dir(&self.dir);
    }
}
