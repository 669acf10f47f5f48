//! Backup: a PostgreSQL database of `--size-mib` of realistic text backed up by the real
//! `lethe-backup`, and, on the same data and the same S3, by the two shell pipelines operators
//! write by hand (the conventional one and a hand-tuned one); then restored by `lethe-backup`
//! and by the conventional pipeline in reverse.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use lethe_tests::Services;
use lethe_tests::backup_support::BackupBed;
use lethe_tests::process::peak_rss_bytes;
use sqlx::{Connection as _, PgConnection};

/// The table the benchmark fills (in the sample accounts database, beside the sample tables).
const TABLE: &str = "bench_support_notes";
/// COPY data sent per message.
const COPY_CHUNK: usize = 4 << 20;

/// Runs the backup benchmark on `size_mib` MiB of table data.
pub async fn run(size_mib: u64) -> Result<()> {
    if size_mib == 0 {
        bail!("--size-mib must be at least 1");
    }
    let aws = aws_cli()?;
    let services = Services::from_env();
    let bed = BackupBed::create(&services).await?;
    let source = bed.bed.options.accounts_url.clone();
    fill(&source, size_mib << 20).await?;
    let (dump_bytes,): (i64,) = sqlx::query_as("SELECT pg_database_size(current_database())")
        .fetch_one(&mut PgConnection::connect(&source).await?)
        .await?;

    let s3 = &services.s3;
    let bucket = &bed.bucket;
    let scratch = tempfile::tempdir()?;
    let aws_config = scratch.path().join("aws-config");
    std::fs::write(
        &aws_config,
        "[default]\ns3 =\n    addressing_style = path\n    multipart_chunksize = 16MB\n",
    )?;
    let shell_env: Vec<(&str, String)> = vec![
        ("GNUPGHOME", bed.gpg.home().display().to_string()),
        ("AWS_ACCESS_KEY_ID", s3.access_key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_access_key.clone()),
        ("AWS_DEFAULT_REGION", s3.region.clone()),
        ("AWS_CONFIG_FILE", aws_config.display().to_string()),
        ("SOURCE", source.clone()),
        ("KEY", bed.fingerprint.clone()),
        ("AWS", aws.clone()),
        ("ENDPOINT", s3.endpoint.clone()),
        ("BUCKET", bucket.clone()),
    ];
    let pipelines = [
        (
            "bare pg_dump -Fc -Z0 > /dev/null (floor)",
            r#"pg_dump -Fc -Z0 --dbname="$SOURCE" > /dev/null"#,
        ),
        (
            "hand-tuned: pg_dump -Fc -Z0 | zstd -3 -T2 | gpg --compress-algo none -e | aws s3 cp",
            r#"pg_dump -Fc -Z0 --dbname="$SOURCE" | zstd -q -3 -T2 | gpg --batch --trust-model always --compress-algo none --encrypt -r "$KEY" | "$AWS" --endpoint-url "$ENDPOINT" s3 cp - "s3://$BUCKET/bench/hand-tuned.dump.zst.gpg""#,
        ),
        (
            "conventional: pg_dump -Fc | gpg -e | aws s3 cp",
            r#"pg_dump -Fc --dbname="$SOURCE" | gpg --batch --trust-model always --encrypt -r "$KEY" | "$AWS" --endpoint-url "$ENDPOINT" s3 cp - "s3://$BUCKET/bench/conventional.dump.gpg""#,
        ),
    ];

    eprintln!("backup: lethe-backup run --store accounts");
    let mut command = bed.cli_command(&["run", "--store", "accounts"], &[])?;
    command.stdout(Stdio::piped());
    let lethe = measure(command)?;
    let summary: serde_json::Value = serde_json::from_slice(
        lethe
            .stdout
            .split(|&b| b == b'\n')
            .find(|l| !l.is_empty())
            .context("lethe-backup printed no summary")?,
    )
    .context("lethe-backup's summary is not JSON")?;
    let backup_id = summary["backup_id"]
        .as_str()
        .context("the summary has no backup_id")?
        .to_owned();
    let lethe_object = summary["ciphertext_bytes"].as_u64().unwrap_or(0);

    let mut shell = Vec::new();
    for (name, script) in pipelines {
        eprintln!("backup: {name}");
        shell.push((name, measure(bash(script, &shell_env))?));
    }
    let conventional = shell[2].1.wall;
    let hand_tuned = shell[1].1.wall;

    eprintln!("restore: lethe-backup restore into a new database");
    let lethe_target = bed.bed.ns().pg_database("restore_lethe").await?;
    let target_var = bed.bed.variable("RESTORE_TARGET_URL");
    let mut command = bed.cli_command(
        &[
            "restore",
            "--backup",
            &backup_id,
            "--secret-key",
            &bed.secret_key.display().to_string(),
            "--target",
            &format!("env:{target_var}"),
        ],
        &[(target_var.as_str(), lethe_target.as_str())],
    )?;
    command.stdout(Stdio::null());
    let lethe_restore = measure(command)?;

    eprintln!("restore: aws s3 cp | gpg -d | pg_restore into a new database");
    let shell_target = bed.bed.ns().pg_database("restore_shell").await?;
    let mut env = shell_env.clone();
    env.push(("TARGET", shell_target.clone()));
    let shell_restore = measure(bash(
        r#""$AWS" --endpoint-url "$ENDPOINT" s3 cp "s3://$BUCKET/bench/conventional.dump.gpg" - | gpg --batch --quiet -d | pg_restore --no-owner --dbname="$TARGET""#,
        &env,
    ))?;
    for target in [&lethe_target, &shell_target] {
        let (rows,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM {TABLE}"))
            .fetch_one(&mut PgConnection::connect(target).await?)
            .await?;
        let (source_rows,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM {TABLE}"))
            .fetch_one(&mut PgConnection::connect(&source).await?)
            .await?;
        if rows != source_rows {
            bail!("a restore holds {rows} rows of {source_rows}");
        }
    }

    let mb = dump_bytes as f64 / 1e6;
    println!();
    println!(
        "database: {mb:.0} MB on disk ({TABLE}: generated support notes, English-like text); lethe object {:.0} MB",
        lethe_object as f64 / 1e6
    );
    println!();
    println!("| run | wall s | vs conventional | vs hand-tuned | DB MB/s | peak RSS |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let row = |name: &str, m: &Measured, rss: bool| {
        let name = name.replace('|', "\\|");
        println!(
            "| {name} | {:.1} | {:.2}x | {:.2}x | {:.0} | {} |",
            m.wall,
            m.wall / conventional,
            m.wall / hand_tuned,
            mb / m.wall,
            if rss {
                format!("{} MiB", m.peak_rss >> 20)
            } else {
                String::new()
            }
        );
    };
    row(
        "lethe-backup run (pg_dump, zstd, OpenPGP, S3 multipart)",
        &lethe,
        true,
    );
    for (name, measured) in &shell {
        row(name, measured, false);
    }
    println!();
    println!("| restore | wall s | vs pipeline | peak RSS |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| lethe-backup restore (S3, OpenPGP, zstd -d, pg_restore) | {:.1} | {:.2}x | {} MiB |",
        lethe_restore.wall,
        lethe_restore.wall / shell_restore.wall,
        lethe_restore.peak_rss >> 20
    );
    println!(
        "| aws s3 cp - \\| gpg -d \\| pg_restore | {:.1} | 1.00x | |",
        shell_restore.wall
    );
    bed.cleanup().await
}

/// `aws`, the AWS command line: from `PATH`, or the one `scripts/bench` installs.
fn aws_cli() -> Result<String> {
    if Command::new("aws")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return Ok("aws".to_owned());
    }
    let home = std::env::var("LETHE_HOME").unwrap_or_else(|_| {
        format!(
            "{}/.local/share/lethe",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let venv = Path::new(&home).join("venv/bin/aws");
    if venv.is_file() {
        return Ok(venv.display().to_string());
    }
    bail!(
        "the AWS command line (aws) is not installed: run the benchmark with scripts/bench, which installs it"
    )
}

/// `bash -o pipefail -c script` with `env`.
fn bash(script: &str, env: &[(&str, String)]) -> Command {
    let mut command = Command::new("bash");
    command.args(["-o", "pipefail", "-c", script]);
    for (key, value) in env {
        command.env(key, value);
    }
    command.stdout(Stdio::null());
    command
}

/// What one measured command did.
struct Measured {
    wall: f64,
    peak_rss: u64,
    stdout: Vec<u8>,
}

/// Runs `command` to its end, sampling its peak RSS (VmHWM) every 10 ms; fails unless it
/// succeeds.
fn measure(mut command: Command) -> Result<Measured> {
    use std::io::Read as _;
    let started = Instant::now();
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the command")?;
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut stdout) = stdout {
            let _ = stdout.read_to_end(&mut out);
        }
        out
    });
    let mut stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut out = String::new();
        if let Some(stderr) = stderr.as_mut() {
            let _ = stderr.read_to_string(&mut out);
        }
        out
    });
    let mut peak_rss = 0;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        peak_rss = peak_rss.max(peak_rss_bytes(child.id()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(10));
    };
    let wall = started.elapsed().as_secs_f64();
    let stdout = reader.join().unwrap_or_default();
    let stderr = errors.join().unwrap_or_default();
    if !status.success() {
        bail!("the command failed ({status}): {stderr}");
    }
    Ok(Measured {
        wall,
        peak_rss,
        stdout,
    })
}

/// Fills [`TABLE`] with about `bytes` of generated support notes, over two connections.
async fn fill(url: &str, bytes: u64) -> Result<()> {
    eprintln!("filling {TABLE} with {} MiB of text", bytes >> 20);
    let started = Instant::now();
    let mut connection = PgConnection::connect(url).await?;
    sqlx::query(&format!(
        "CREATE TABLE {TABLE} (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, \
         title text NOT NULL, body text NOT NULL)"
    ))
    .execute(&mut connection)
    .await?;
    let writers = 2u64;
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers {
        let url = url.to_owned();
        tasks.spawn(async move {
            let mut connection = PgConnection::connect(&url).await?;
            let mut copy = connection
                .copy_in_raw(&format!("COPY {TABLE} FROM STDIN"))
                .await?;
            let mut text = Text::new(writer + 1);
            let mut buffer = String::with_capacity(COPY_CHUNK + 8192);
            let (mut written, mut id) = (0u64, writer);
            while written < bytes / writers {
                text.row(id, &mut buffer);
                id += writers;
                if buffer.len() >= COPY_CHUNK {
                    written += buffer.len() as u64;
                    copy.send(std::mem::take(&mut buffer).into_bytes()).await?;
                    buffer.reserve(COPY_CHUNK + 8192);
                }
            }
            copy.send(buffer.into_bytes()).await?;
            copy.finish().await?;
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    sqlx::query(&format!("ANALYZE {TABLE}"))
        .execute(&mut connection)
        .await?;
    eprintln!("filled in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Words of support notes, the most frequent first (picked with a Zipf-like bias, as in
/// natural text, so the text compresses about as well as real prose).
const WORDS: &[&str] = &[
    "the",
    "to",
    "and",
    "a",
    "of",
    "is",
    "in",
    "that",
    "it",
    "for",
    "you",
    "on",
    "we",
    "this",
    "with",
    "not",
    "be",
    "have",
    "are",
    "can",
    "customer",
    "account",
    "please",
    "your",
    "was",
    "but",
    "our",
    "as",
    "at",
    "they",
    "from",
    "an",
    "if",
    "will",
    "or",
    "my",
    "issue",
    "when",
    "invoice",
    "login",
    "password",
    "reset",
    "page",
    "after",
    "again",
    "error",
    "message",
    "support",
    "team",
    "update",
    "working",
    "browser",
    "mobile",
    "app",
    "settings",
    "export",
    "report",
    "subscription",
    "plan",
    "payment",
    "card",
    "billing",
    "address",
    "email",
    "notification",
    "dashboard",
    "integration",
    "webhook",
    "delay",
    "slow",
    "loading",
    "screenshot",
    "attached",
    "yesterday",
    "morning",
    "today",
    "week",
    "thanks",
    "help",
    "resolved",
    "escalated",
    "engineering",
    "ticket",
    "priority",
    "refund",
    "charged",
    "twice",
    "cancel",
    "renewal",
    "trial",
    "upgrade",
    "downgrade",
    "feature",
    "request",
    "workaround",
    "cache",
    "cleared",
    "cookies",
    "version",
    "release",
    "note",
    "confirmed",
    "reproduce",
    "steps",
    "expected",
    "actual",
    "behaviour",
    "timezone",
    "calendar",
    "sync",
    "contacts",
    "import",
    "file",
    "upload",
    "limit",
    "size",
    "format",
    "spreadsheet",
    "column",
    "missing",
    "duplicate",
    "entries",
    "search",
    "results",
    "filter",
    "sorting",
    "language",
    "translation",
    "permissions",
    "admin",
    "role",
    "invite",
    "colleague",
    "workspace",
    "folder",
    "shared",
    "link",
    "expired",
    "token",
    "session",
    "logged",
    "out",
    "twofactor",
    "code",
    "sms",
    "received",
    "never",
    "arrived",
    "spam",
    "checked",
    "inbox",
    "forwarded",
    "agent",
    "replied",
    "waiting",
    "response",
    "follow",
    "up",
    "closing",
    "reopened",
    "because",
    "still",
    "happens",
    "sometimes",
    "every",
    "time",
    "only",
    "also",
    "would",
    "could",
    "should",
    "like",
    "need",
    "want",
    "know",
    "see",
    "try",
    "tried",
    "does",
    "did",
    "has",
    "had",
    "been",
    "there",
    "their",
    "what",
    "which",
    "who",
    "how",
    "all",
    "any",
    "some",
    "more",
    "than",
    "then",
];

/// A deterministic generator of support notes.
struct Text {
    state: u64,
}

impl Text {
    fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*: fast and good enough for text.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn word(&mut self) -> &'static str {
        // The smaller of two draws: frequent words come up far more often, as in prose.
        let i = self.below(WORDS.len()).min(self.below(WORDS.len()));
        WORDS[i]
    }

    fn sentence(&mut self, out: &mut String) {
        let words = 6 + self.below(16);
        for w in 0..words {
            let word = self.word();
            if w == 0 {
                let mut chars = word.chars();
                if let Some(first) = chars.next() {
                    out.extend(first.to_uppercase());
                    out.push_str(chars.as_str());
                }
            } else {
                out.push(' ');
                out.push_str(word);
            }
        }
        out.push_str(if self.below(8) == 0 { "? " } else { ". " });
    }

    /// One COPY line: id, created_at, title, body (paragraphs joined by an escaped newline).
    fn row(&mut self, id: u64, out: &mut String) {
        use std::fmt::Write as _;
        let day = self.below(1000);
        let second = self.below(86_400);
        let _ = write!(out, "{id}");
        let _ = write!(
            out,
            "\t2024-{:02}-{:02} {:02}:{:02}:{:02}+00\t",
            1 + day % 12,
            1 + day % 28,
            second / 3600,
            second / 60 % 60,
            second % 60
        );
        for _ in 0..3 + self.below(6) {
            out.push_str(self.word());
            out.push(' ');
        }
        out.pop();
        out.push('\t');
        for paragraph in 0..1 + self.below(5) {
            if paragraph > 0 {
                out.push_str("\\n\\n");
            }
            for _ in 0..2 + self.below(6) {
                self.sentence(out);
            }
            out.pop();
        }
        out.push('\n');
    }
}
