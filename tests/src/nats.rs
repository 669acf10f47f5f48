//! A private `nats-server` for tests that stop, restart or otherwise disturb NATS.

use std::fs::OpenOptions;
use std::io::{BufRead as _, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// How long a starting server may take to accept clients with JetStream enabled.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A `nats-server -js` child process on a free loopback port with its own store directory,
/// killed and its directory removed on `Drop`.
///
/// [`NatsServer::stop`] kills it (as a crash would); [`NatsServer::restart`] starts it again on
/// the same port with the same store, so JetStream streams and consumers survive.
pub struct NatsServer {
    child: Option<Child>,
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
}

impl NatsServer {
    /// Starts a server and waits until it accepts clients with JetStream enabled.
    pub async fn start() -> Result<Self> {
        let bin = nats_server_bin()?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("while picking a free port")?
            .port();
        let dir =
            std::env::temp_dir().join(format!("lethe-nats-{port}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(dir.join("store"))
            .with_context(|| format!("while creating {}", dir.display()))?;
        let mut server = Self {
            child: None,
            bin,
            port,
            dir,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (the same across restarts).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// The server's log file (stdout and stderr of every run).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("nats-server.log")
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it to exit. Clients see the
    /// connection drop; nothing listens on the port until [`NatsServer::restart`].
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child
                .wait()
                .context("while waiting for nats-server to exit")?;
        }
        Ok(())
    }

    /// Starts the server again on the same port with the same store directory (stopping it
    /// first if it runs).
    pub async fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn().await
    }

    async fn spawn(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .context("while opening the nats-server log")?;
        let log_err = log
            .try_clone()
            .context("while opening the nats-server log")?;
        let child = Command::new(&self.bin)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.store_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .with_context(|| format!("while starting {}", self.bin.display()))?;
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if !self.is_running() {
                bail!(
                    "nats-server exited at start-up; its log:\n{}",
                    tail(&self.log_file())
                );
            }
            if jetstream_ready(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop().ok();
                bail!(
                    "nats-server not ready after {READY_TIMEOUT:?}; its log:\n{}",
                    tail(&self.log_file())
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Whether a server on `port` greets clients with an INFO line announcing JetStream.
fn jetstream_ready(port: u16) -> bool {
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok()
        && line.starts_with("INFO ")
        && line.contains("\"jetstream\":true")
}

/// The last 20 lines of a log file.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The `nats-server` binary the tests use: `LETHE_NATS_SERVER_BIN` if set, else the first of
/// `nats-server` on `PATH` and `$HOME/.local/share/lethe/venv/bin/nats-server` (where the
/// local stack installs it) whose version is at least 2.10 (older servers ignore JetStream
/// settings Lethe relies on).
pub fn nats_server_bin() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| find_nats_server().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn find_nats_server() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("LETHE_NATS_SERVER_BIN").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(bin));
    }
    let mut candidates = vec![PathBuf::from("nats-server")];
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".local/share/lethe/venv/bin/nats-server"));
    }
    let mut seen = Vec::new();
    for bin in candidates {
        match version(&bin) {
            Some((major, minor)) if (major, minor) >= (2, 10) => return Ok(bin),
            Some((major, minor)) => seen.push(format!("{} is {major}.{minor}", bin.display())),
            None => seen.push(format!("{} not found", bin.display())),
        }
    }
    bail!(
        "no nats-server >= 2.10 ({}); install one (scripts/) or set LETHE_NATS_SERVER_BIN",
        seen.join(", ")
    )
}

/// `nats-server --version` prints `nats-server: v2.10.22`.
fn version(bin: &Path) -> Option<(u32, u32)> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.rsplit('v').next()?.trim();
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}
