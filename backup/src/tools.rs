//! The field's own tools, run as child processes: how a store's URL becomes their arguments
//! (passwords go through the environment, never the command line, where `ps` shows them), and
//! how their output and input are streamed.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;

use bytes::BytesMut;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use url::Url;

use crate::pipeline::{CHUNK_SIZE, Chunk};

/// How much of a tool's standard error is kept for its error message.
const STDERR_TAIL: usize = 2048;

/// A command line and its environment, without secrets in the arguments.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// Arguments.
    pub args: Vec<OsString>,
    /// Environment variables (passwords).
    pub env: Vec<(String, SecretString)>,
}

impl Invocation {
    fn arg(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.args.push(arg.into());
        self
    }

    /// The command, ready to spawn.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command.args(&self.args);
        for (key, value) in &self.env {
            command.env(key, value.expose_secret());
        }
        command.kill_on_drop(true);
        command
    }
}

fn parse(url: &SecretString, what: &str) -> anyhow::Result<Url> {
    // The parser's message never quotes the URL, which may hold a password.
    Url::parse(url.expose_secret()).map_err(|e| anyhow::anyhow!("the {what} URL is invalid: {e}"))
}

fn decoded(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// `pg_dump` / `pg_restore` connection arguments: the URL without its password as `--dbname`
/// (libpq reads URIs there), the password as `PGPASSWORD`.
pub fn postgres(url: &SecretString) -> anyhow::Result<Invocation> {
    let mut url = parse(url, "PostgreSQL")?;
    let mut invocation = Invocation::default();
    if let Some(password) = url.password() {
        invocation
            .env
            .push(("PGPASSWORD".into(), SecretString::from(decoded(password))));
    }
    url.set_password(None)
        .map_err(|()| anyhow::anyhow!("the PostgreSQL URL cannot carry a password"))?;
    invocation.arg(format!("--dbname={url}"));
    Ok(invocation)
}

/// The database name of a PostgreSQL URL.
pub fn postgres_database(url: &SecretString) -> anyhow::Result<String> {
    let url = parse(url, "PostgreSQL")?;
    Ok(decoded(url.path().trim_start_matches('/')))
}

/// `mariadb-dump` / `mariadb` connection arguments and the database name: host, port, user,
/// socket; the password as `MYSQL_PWD`.
pub fn mysql(url: &SecretString) -> anyhow::Result<(Invocation, String)> {
    let url = parse(url, "MariaDB")?;
    let mut invocation = Invocation::default();
    let socket = url
        .query_pairs()
        .find(|(k, _)| k == "socket")
        .map(|(_, v)| v.into_owned());
    match socket {
        Some(socket) => {
            invocation.arg(format!("--socket={socket}"));
        }
        None => {
            invocation
                .arg("--protocol=TCP")
                .arg(format!("--host={}", url.host_str().unwrap_or("localhost")));
            invocation.arg(format!("--port={}", url.port().unwrap_or(3306)));
        }
    }
    if !url.username().is_empty() {
        invocation.arg(format!("--user={}", decoded(url.username())));
    }
    if let Some(password) = url.password() {
        invocation
            .env
            .push(("MYSQL_PWD".into(), SecretString::from(decoded(password))));
    }
    let database = decoded(url.path().trim_start_matches('/'));
    if database.is_empty() {
        anyhow::bail!("the MariaDB URL names no database");
    }
    Ok((invocation, database))
}

/// `redis-cli` connection arguments: host and port or socket, user, TLS; the password as
/// `REDISCLI_AUTH`.
pub fn redis(url: &SecretString) -> anyhow::Result<Invocation> {
    let url = parse(url, "Redis")?;
    let mut invocation = Invocation::default();
    match url.scheme() {
        "redis" | "rediss" => {
            invocation
                .arg("-h")
                .arg(url.host_str().unwrap_or("127.0.0.1"))
                .arg("-p")
                .arg(url.port().unwrap_or(6379).to_string());
            if url.scheme() == "rediss" {
                invocation.arg("--tls");
            }
        }
        "unix" | "redis+unix" => {
            invocation.arg("-s").arg(url.path());
        }
        other => anyhow::bail!("unsupported Redis URL scheme `{other}`"),
    }
    let user = decoded(url.username());
    if !user.is_empty() && user != "default" {
        invocation.arg("--user").arg(user);
    }
    if let Some(password) = url.password() {
        invocation.env.push((
            "REDISCLI_AUTH".into(),
            SecretString::from(decoded(password)),
        ));
    }
    Ok(invocation)
}

/// The first line of `<program> --version`, which the manifest records.
pub async fn version(program: &Path) -> anyhow::Result<String> {
    let output = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", program.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().next().unwrap_or_default().trim().to_owned();
    if !output.status.success() || line.is_empty() {
        anyhow::bail!("{} --version failed ({})", program.display(), output.status);
    }
    Ok(line)
}

/// The last bytes a child wrote on standard error.
pub fn stderr_tail(child: &mut Child) -> JoinHandle<String> {
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        let Some(mut stderr) = stderr else {
            return String::new();
        };
        let mut tail: VecDeque<u8> = VecDeque::with_capacity(STDERR_TAIL);
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            for byte in &buffer[..n] {
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(*byte);
            }
        }
        let text = String::from_utf8_lossy(tail.make_contiguous()).into_owned();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" | ")
    })
}

/// Reads `reader` to its end into `tx` in chunks of about [`CHUNK_SIZE`]; returns the byte
/// count. Stops (with an error) when the receiver is gone.
pub async fn forward<R: AsyncRead + Unpin>(
    mut reader: R,
    tx: &mpsc::Sender<Chunk>,
) -> anyhow::Result<u64> {
    let mut total = 0u64;
    loop {
        let mut buffer = BytesMut::with_capacity(CHUNK_SIZE);
        while buffer.len() < CHUNK_SIZE {
            if reader.read_buf(&mut buffer).await? == 0 {
                break;
            }
        }
        if buffer.is_empty() {
            return Ok(total);
        }
        let last = buffer.len() < CHUNK_SIZE;
        total += buffer.len() as u64;
        tx.send(Ok(buffer.freeze()))
            .await
            .map_err(|_| crate::pipeline::StageStopped)?;
        if last {
            // read_buf returned 0 above: the end.
            return Ok(total);
        }
    }
}

/// Runs `command` with its standard output streamed into `tx`. When the output ends, the exit
/// status decides: a failure is sent on as an error item (so the stage after fails) and
/// returned, with the end of the tool's standard error.
pub fn spawn_source(
    name: String,
    mut command: Command,
    tx: mpsc::Sender<Chunk>,
) -> anyhow::Result<JoinHandle<anyhow::Result<u64>>> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
    let stderr = stderr_tail(&mut child);
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("{name} has no standard output"))?;
    Ok(tokio::spawn(async move {
        let bytes = match forward(stdout, &tx).await {
            Ok(bytes) => bytes,
            // The child is killed on drop: the stage after it stopped.
            Err(error) => return Err(error.context(format!("while reading {name}'s output"))),
        };
        let status = child.wait().await?;
        let tail = stderr.await.unwrap_or_default();
        if status.success() {
            return Ok(bytes);
        }
        let error = anyhow::anyhow!("{name} failed ({status}): {tail}");
        let _ = tx.send(Err(std::io::Error::other(error.to_string()))).await;
        Err(error)
    }))
}

/// Runs `command` with what arrives on `rx` as its standard input; waits for it to exit. An
/// error item kills it (a restore must not commit half a dump).
pub async fn run_sink(
    name: &str,
    mut command: Command,
    mut rx: mpsc::Receiver<Chunk>,
) -> anyhow::Result<()> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
    let stderr = stderr_tail(&mut child);
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("{name} has no standard input"))?;
    let mut failure = None;
    while let Some(chunk) = rx.recv().await {
        match chunk {
            Ok(chunk) => {
                if let Err(error) = stdin.write_all(&chunk).await {
                    failure = Some(anyhow::anyhow!("{name} stopped reading: {error}"));
                    break;
                }
            }
            Err(error) => {
                child.start_kill().ok();
                failure = Some(anyhow::anyhow!("{error}"));
                break;
            }
        }
    }
    drop(stdin);
    drop(rx);
    let status = child.wait().await?;
    let tail = stderr.await.unwrap_or_default();
    if let Some(error) = failure {
        return Err(if status.success() {
            error
        } else {
            error.context(format!("{name} failed ({status}): {tail}"))
        });
    }
    if !status.success() {
        anyhow::bail!("{name} failed ({status}): {tail}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    fn args(invocation: &Invocation) -> Vec<String> {
        invocation
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn passwords_go_to_the_environment_never_to_the_command_line() {
        let pg = postgres(&secret("postgres://u:p%40ss@db:5433/acc?sslmode=require")).unwrap();
        assert_eq!(
            args(&pg),
            ["--dbname=postgres://u@db:5433/acc?sslmode=require"]
        );
        assert_eq!(pg.env[0].0, "PGPASSWORD");
        assert_eq!(pg.env[0].1.expose_secret(), "p@ss");

        let (my, db) = mysql(&secret("mysql://root:pw@127.0.0.1:3307/chat")).unwrap();
        assert_eq!(db, "chat");
        assert_eq!(
            args(&my),
            [
                "--protocol=TCP",
                "--host=127.0.0.1",
                "--port=3307",
                "--user=root"
            ]
        );
        assert_eq!(my.env[0].0, "MYSQL_PWD");

        let redis = redis(&secret("redis://:secret@cache:6380/2")).unwrap();
        assert_eq!(args(&redis), ["-h", "cache", "-p", "6380"]);
        assert_eq!(redis.env[0].0, "REDISCLI_AUTH");
        for invocation in [&pg, &my, &redis] {
            assert!(!args(invocation).concat().contains("secret"));
            assert!(!args(invocation).concat().contains("pw@"));
        }
    }
}
