//! The streaming stages and the bounded channels between them.
//!
//! Backup: `source (child stdout or tar of objects) -> [blocking: zstd -> OpenPGP] -> uploader`.
//! Restore: `download -> [blocking: OpenPGP (or gpg) -> zstd -d -> sink]`.
//!
//! Compression and encryption are synchronous and CPU-bound, so they run on `spawn_blocking`
//! threads; async stages hand them data through channels of at most [`DEPTH`] chunks of about
//! [`CHUNK_SIZE`] bytes, so what is in flight between two stages is bounded whatever the size of
//! the dump. An item of a channel is either data or the error that ended the stage before it, so
//! a failure upstream surfaces downstream as a failure, never as a clean (truncated) end.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::keys::{Recipients, SecretKeys};

/// What travels between stages: data, or the error that stopped the stage before.
pub type Chunk = io::Result<Bytes>;

/// Target size of the chunks handed between stages.
pub const CHUNK_SIZE: usize = 256 * 1024;
/// Chunks a channel holds before its sender waits.
pub const DEPTH: usize = 8;
/// Input of one zstd job when compressing with worker threads.
const ZSTD_JOB_SIZE: u32 = 2 << 20;
/// Plaintext the OpenPGP decryptor may hold back before releasing it.
const DECRYPT_BUFFER: usize = 1 << 20;

/// The stage after this one stopped reading, because it failed: an effect, never the cause to
/// report.
#[derive(Debug, thiserror::Error)]
#[error("the next stage stopped")]
pub struct StageStopped;

/// Whether `error` only says that a later stage stopped.
pub fn is_stage_stopped(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.is::<StageStopped>()
            || cause
                .downcast_ref::<io::Error>()
                .and_then(|e| e.get_ref())
                .is_some_and(|inner| inner.is::<StageStopped>())
    })
}

/// A bounded channel between two stages.
pub fn channel() -> (mpsc::Sender<Chunk>, mpsc::Receiver<Chunk>) {
    mpsc::channel(DEPTH)
}

/// Byte counters shared with the progress logger.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes read from the source (the dump).
    pub plaintext: AtomicU64,
    /// Bytes of ciphertext produced.
    pub ciphertext: AtomicU64,
}

/// A blocking [`Write`] into a channel, in chunks of [`CHUNK_SIZE`]; counts what it passes on
/// and, optionally, hashes it.
pub struct ChannelWriter {
    tx: mpsc::Sender<Chunk>,
    buffer: BytesMut,
    written: u64,
    hasher: Option<Sha256>,
    progress: Option<Arc<Progress>>,
}

impl ChannelWriter {
    /// A writer into `tx`.
    pub fn new(tx: mpsc::Sender<Chunk>) -> Self {
        Self {
            tx,
            buffer: BytesMut::with_capacity(CHUNK_SIZE),
            written: 0,
            hasher: None,
            progress: None,
        }
    }

    /// Also computes the SHA-256 of what passes, and counts it in `progress.ciphertext`.
    pub fn hashing(tx: mpsc::Sender<Chunk>, progress: Arc<Progress>) -> Self {
        Self {
            hasher: Some(Sha256::new()),
            progress: Some(progress),
            ..Self::new(tx)
        }
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = self.buffer.split().freeze();
        self.buffer.reserve(CHUNK_SIZE);
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, StageStopped))
    }

    /// Sends what is buffered and returns the byte count and the hex SHA-256 (empty unless
    /// [`ChannelWriter::hashing`]).
    pub fn finish(mut self) -> io::Result<(u64, String)> {
        self.send_buffered()?;
        let digest = self
            .hasher
            .take()
            .map(|h| hex::encode(h.finalize()))
            .unwrap_or_default();
        Ok((self.written, digest))
    }

    /// Tells the next stage that this one failed.
    pub fn fail(self, error: &anyhow::Error) {
        let _ = self
            .tx
            .blocking_send(Err(io::Error::other(format!("{error:#}"))));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(hasher) = &mut self.hasher {
            hasher.update(data);
        }
        if let Some(progress) = &self.progress {
            progress
                .ciphertext
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        self.written += data.len() as u64;
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK_SIZE {
            self.send_buffered()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunks go when full or at `finish`: a flush from a layer above must not fragment the
        // stream into tiny messages.
        Ok(())
    }
}

/// A blocking [`Read`] from a channel. An error item is returned as a read error; the end of
/// the channel is the end of the data.
pub struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
}

impl ChannelReader {
    /// A reader of `rx`.
    pub fn new(rx: mpsc::Receiver<Chunk>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(error)) => return Err(error),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// A writer that counts what passes through it.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that counts what passes through it.
pub struct CountingReader<R> {
    inner: R,
    /// Bytes read so far.
    pub count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// What the encoder produced.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Bytes of the dump.
    pub plaintext_bytes: u64,
    /// Bytes after zstd.
    pub compressed_bytes: u64,
    /// Bytes of the OpenPGP message.
    pub ciphertext_bytes: u64,
    /// Hex SHA-256 of the OpenPGP message.
    pub ciphertext_sha256: String,
}

/// zstd settings of the encoder.
#[derive(Debug, Clone, Copy)]
pub struct Compression {
    /// Level.
    pub level: i32,
    /// Worker threads (0: single-threaded, on the encoder's thread).
    pub workers: u32,
}

/// Compresses and encrypts what arrives on `input`, sending the OpenPGP message to `output`.
/// The literal packet inside is named `filename` (what `gpg --decrypt` would suggest).
pub fn spawn_encoder(
    mut input: mpsc::Receiver<Chunk>,
    output: mpsc::Sender<Chunk>,
    recipients: Arc<Recipients>,
    filename: String,
    compression: Compression,
    progress: Arc<Progress>,
) -> JoinHandle<anyhow::Result<Encoded>> {
    tokio::task::spawn_blocking(move || {
        let mut sink = ChannelWriter::hashing(output, progress.clone());
        let result = (|| -> anyhow::Result<(u64, u64)> {
            let message = recipients.encrypt(&mut sink, &filename)?;
            let counted = Counting {
                inner: message,
                count: 0,
            };
            let mut zstd = zstd::stream::write::Encoder::new(counted, compression.level)?;
            zstd.include_checksum(true)?;
            if compression.workers > 0 {
                zstd.multithread(compression.workers)?;
                // zstd's own job size (4 windows, 8 MiB at level 3) costs ~20 MiB of buffers per
                // worker; 2 MiB jobs keep the workers busy for a fraction of that, at the same
                // ratio (measured on a 320 MB pg_dump: 142 -> 103 MiB peak RSS in a debug build).
                zstd.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))?;
            }
            let mut plaintext = 0u64;
            while let Some(chunk) = input.blocking_recv() {
                let chunk = chunk?;
                plaintext += chunk.len() as u64;
                progress
                    .plaintext
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                zstd.write_all(&chunk)?;
            }
            let counted = zstd.finish()?;
            let compressed = counted.count;
            counted.inner.finalize()?;
            Ok((plaintext, compressed))
        })();
        match result {
            Ok((plaintext_bytes, compressed_bytes)) => {
                let (ciphertext_bytes, ciphertext_sha256) = sink.finish()?;
                Ok(Encoded {
                    plaintext_bytes,
                    compressed_bytes,
                    ciphertext_bytes,
                    ciphertext_sha256,
                })
            }
            Err(error) => {
                sink.fail(&error);
                Err(error)
            }
        }
    })
}

/// How a restore or a verification decrypts.
pub enum Decryption {
    /// In process, with the operator's secret keys.
    Keys(Box<SecretKeys>),
    /// The input is already plaintext (the operator's `gpg` decrypted it).
    Done,
}

/// Decrypts (if asked) and decompresses `input`, handing the dump to `sink` on this blocking
/// thread; returns what `sink` returned and the size of the dump.
pub fn spawn_decoder<T, F>(
    input: mpsc::Receiver<Chunk>,
    decryption: Decryption,
    sink: F,
) -> JoinHandle<anyhow::Result<(T, u64)>>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Read) -> anyhow::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let reader = ChannelReader::new(input);
        match decryption {
            Decryption::Keys(mut keys) => {
                let plaintext = keys.decrypt(reader, DECRYPT_BUFFER)?;
                decompress(plaintext, sink)
            }
            Decryption::Done => decompress(reader, sink),
        }
    })
}

fn decompress<R, T, F>(compressed: R, sink: F) -> anyhow::Result<(T, u64)>
where
    R: Read,
    F: FnOnce(&mut dyn Read) -> anyhow::Result<T>,
{
    let decoder = zstd::stream::read::Decoder::new(compressed)?;
    let mut counted = CountingReader {
        inner: decoder,
        count: 0,
    };
    let value = sink(&mut counted)?;
    // Whatever the sink left unread still has to decompress (and decrypt) cleanly.
    io::copy(&mut counted, &mut io::sink())?;
    Ok((value, counted.count))
}

/// Copies `reader` into `tx` in chunks; on a read error, passes the error on (so the stage
/// after fails too) and returns it.
pub fn pump(reader: &mut dyn Read, tx: mpsc::Sender<Chunk>) -> anyhow::Result<u64> {
    let mut writer = ChannelWriter::new(tx);
    match io::copy(reader, &mut writer) {
        Ok(_) => Ok(writer.finish()?.0),
        Err(error) => {
            let error = anyhow::Error::new(error);
            writer.fail(&error);
            Err(error)
        }
    }
}
