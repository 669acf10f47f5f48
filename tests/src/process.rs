//! Running the real daemon binaries as processes, as an operator would: each with its
//! configuration file, its environment, its own port and a log file, stopped with SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// The directory holding the workspace's binaries: the one this executable runs from
/// (`target/<profile>/` for a binary, `target/<profile>/deps/` for a test).
pub fn binaries_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let dir = exe.parent().context("executable without a directory")?;
    Ok(if dir.ends_with("deps") {
        dir.parent().context("deps without a parent")?.to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One running daemon.
pub struct DaemonProcess {
    name: String,
    child: Child,
    /// Where its operations (or HTTP) endpoints listen.
    pub address: String,
    /// Its log file.
    pub log: PathBuf,
}

impl DaemonProcess {
    /// Starts binary `name` (e.g. `lethe-eraser`) with `config`, listening on `port` (the
    /// `listen_key` override such as `LETHE__ERASER__LISTEN`), with extra environment, logging
    /// to `<log_dir>/<name>-<port>.log`; waits until `/healthz` answers.
    pub async fn start(
        name: &str,
        config: &Path,
        listen_key: &str,
        env: &[(String, String)],
        log_dir: &Path,
    ) -> Result<Self> {
        let binary = binaries_dir()?.join(name);
        if !binary.is_file() {
            bail!("{} is missing: build the binaries first", binary.display());
        }
        let port = free_port()?;
        let address = format!("127.0.0.1:{port}");
        let log = log_dir.join(format!("{name}-{port}.log"));
        let file = std::fs::File::create(&log)?;
        let mut command = Command::new(&binary);
        command
            .arg("--config")
            .arg(config)
            .env(listen_key, &address)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(file);
        // The configuration file and `env` decide, not whatever the test runner inherited.
        for (key, _) in std::env::vars() {
            if key.starts_with("LETHE__") && key != listen_key {
                command.env_remove(key);
            }
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let mut process = Self {
            name: name.to_owned(),
            child,
            address,
            log,
        };
        process.wait_healthy(Duration::from_secs(60)).await?;
        Ok(process)
    }

    async fn wait_healthy(&mut self, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        let url = format!("http://{}/healthz", self.address);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited at start-up ({status}); log {}:\n{}",
                    self.name,
                    self.log.display(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Ok(response) = reqwest::get(&url).await
                && response.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} did not answer /healthz; log {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit; returns whether it exited successfully.
    pub fn stop(mut self) -> Result<bool> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        Ok(self.child.wait()?.success())
    }

    /// Sends SIGTERM and waits up to `limit` for the exit, then kills it; returns whether it
    /// exited successfully by itself.
    pub fn stop_within(mut self, limit: Duration) -> Result<bool> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            if std::time::Instant::now() > deadline {
                self.child.kill()?;
                self.child.wait()?;
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// The peak resident set size the kernel recorded for the process so far, in bytes.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        peak_rss_bytes(self.child.id())
    }
}

/// The peak resident set size (`VmHWM`) the kernel recorded for process `pid` so far, in
/// bytes; `None` once it has exited (or without `/proc`).
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            drop(self.child.kill());
            drop(self.child.wait());
        }
    }
}
