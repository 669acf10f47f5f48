//! A three-node JetStream cluster on loopback, for tests that take a server away from under
//! Lethe: three `nats-server` processes (the same binary as [`crate::NatsServer`]) routed to each
//! other, each with its own `server_name`, JetStream store and monitoring port, all in one
//! temporary directory that goes on `Drop` (with the processes).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use tokio::time::Instant;

use crate::nats::{nats_server_bin, tail};
use crate::process::free_port;

/// How long a cluster may take to elect its meta leader, and a restarted node to catch up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The cluster's name in every node's configuration.
const CLUSTER_NAME: &str = "lethe-test";

/// One node: its ports, its files and (while it runs) its process.
struct Node {
    name: String,
    client_port: u16,
    monitor_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child
                .wait()
                .with_context(|| format!("while waiting for {} to exit", self.name))?;
        }
        Ok(())
    }
}

/// A running JetStream cluster of three `nats-server` processes. Nodes are named `n1`, `n2`,
/// `n3` (their `server_name`, which stream info reports as a stream's leader).
pub struct NatsCluster {
    bin: PathBuf,
    nodes: Vec<Node>,
    dir: PathBuf,
    http: reqwest::Client,
}

impl NatsCluster {
    /// Starts three nodes on free loopback ports and waits until they have elected a
    /// JetStream meta leader (before that, no stream can be created).
    pub async fn start() -> Result<Self> {
        const SIZE: usize = 3;
        let bin = nats_server_bin()?;
        let dir =
            std::env::temp_dir().join(format!("lethe-nats-cluster-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("while creating {}", dir.display()))?;
        let route_ports = (0..SIZE)
            .map(|_| free_port())
            .collect::<Result<Vec<u16>>>()?;
        let routes = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::with_capacity(SIZE);
        for (i, route_port) in route_ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let client_port = free_port()?;
            let monitor_port = free_port()?;
            let store = dir.join(&name);
            let config = dir.join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\n\
                     listen: 127.0.0.1:{client_port}\n\
                     http: 127.0.0.1:{monitor_port}\n\
                     jetstream {{ store_dir: {store:?} }}\n\
                     cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{route_port}\n  routes: [{routes}]\n}}\n",
                    store = store.display().to_string(),
                ),
            )
            .with_context(|| format!("while writing {}", config.display()))?;
            nodes.push(Node {
                log: dir.join(format!("{name}.log")),
                name,
                client_port,
                monitor_port,
                config,
                child: None,
            });
        }
        let mut cluster = Self {
            bin,
            nodes,
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
        };
        for i in 0..SIZE {
            cluster.spawn(i)?;
        }
        cluster.wait_meta_leader().await?;
        Ok(cluster)
    }

    /// Every node's client URL, comma-separated: the form `nats.url` takes for a cluster.
    pub fn urls(&self) -> String {
        self.url_list().join(",")
    }

    /// Every node's client URL.
    pub fn url_list(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect()
    }

    /// The nodes' server names.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Every node's log file.
    pub fn log_files(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|n| n.log.clone()).collect()
    }

    /// A client connected to whichever nodes answer.
    pub async fn client(&self) -> Result<async_nats::Client> {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(self.url_list())
            .await
            .context("while connecting to the cluster")
    }

    /// The server name of `stream`'s leader, from the JetStream API (stream info's cluster
    /// section), retried while the stream has none (during an election).
    pub async fn stream_leader(&self, stream: &str) -> Result<String> {
        let jetstream = async_nats::jetstream::new(self.client().await?);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let leader = match jetstream.get_stream(stream).await {
                Ok(mut s) => s
                    .info()
                    .await
                    .ok()
                    .and_then(|i| i.cluster.clone())
                    .and_then(|c| c.leader),
                Err(_) => None,
            };
            if let Some(leader) = leader.filter(|l| !l.is_empty()) {
                return Ok(leader);
            }
            ensure!(
                Instant::now() < deadline,
                "stream {stream} has no leader after {READY_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills node `name` with SIGKILL (a crash: nothing flushed, no goodbye to its peers).
    pub fn kill(&mut self, name: &str) -> Result<()> {
        self.node_mut(name)?.kill()
    }

    /// Starts node `name` again on the same ports and store, and waits until it reports
    /// itself healthy (JetStream caught up with the meta leader and its streams).
    pub async fn restart(&mut self, name: &str) -> Result<()> {
        let index = self.index(name)?;
        self.nodes[index].kill()?;
        self.spawn(index)?;
        self.wait_healthy(index).await
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .with_context(|| format!("no node named {name}"))
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut Node> {
        let index = self.index(name)?;
        Ok(&mut self.nodes[index])
    }

    fn spawn(&mut self, index: usize) -> Result<()> {
        let node = &mut self.nodes[index];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .context("while opening a node's log")?;
        let log_err = log.try_clone().context("while opening a node's log")?;
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .with_context(|| format!("while starting {}", self.bin.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// Waits until every running node names the same meta leader.
    async fn wait_meta_leader(&mut self) -> Result<String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.ensure_running()?;
            let mut leaders = Vec::new();
            for node in &self.nodes {
                let url = format!("http://127.0.0.1:{}/jsz", node.monitor_port);
                let leader = match self.http.get(&url).send().await {
                    Ok(r) => r.json::<Value>().await.ok().and_then(|v| {
                        v["meta_cluster"]["leader"]
                            .as_str()
                            .filter(|l| !l.is_empty())
                            .map(str::to_owned)
                    }),
                    Err(_) => None,
                };
                leaders.push(leader);
            }
            if let Some(Some(first)) = leaders.first()
                && leaders.iter().all(|l| l.as_ref() == Some(first))
            {
                return Ok(first.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "no meta leader after {READY_TIMEOUT:?} ({leaders:?}); logs:\n{}",
                    self.logs_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_healthy(&mut self, index: usize) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!(
            "http://127.0.0.1:{}/healthz",
            self.nodes[index].monitor_port
        );
        loop {
            self.ensure_running()?;
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not healthy after {READY_TIMEOUT:?}; logs:\n{}",
                    self.nodes[index].name,
                    self.logs_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails when a node that should run has exited.
    fn ensure_running(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            if node.child.is_some() && !node.is_running() {
                bail!("{} exited; its log:\n{}", node.name, tail(&node.log));
            }
        }
        Ok(())
    }

    fn logs_tail(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}:\n{}", n.name, tail(&n.log)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The directory of the nodes' configurations, stores and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill().ok();
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}
