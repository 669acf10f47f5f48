//! The zip writer of an export, on a thread of its own: it receives the archive's entries as a
//! stream of commands (begin an entry, its bytes, end it), turns staged NDJSON into a JSON
//! array and a CSV table on the way, and sends the archive out in chunks as it is written. It
//! never holds more than one record and one output chunk: memory does not grow with the
//! export.
//!
//! The archive is a streaming zip (sizes and CRCs in data descriptors after each entry, ZIP64
//! where an entry or the archive may pass 4 GiB). `manifest.json` comes last: it lists every
//! other entry with its size and SHA-256, computed while the entry was written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Write};

use bytes::Bytes;
use chrono::{DateTime, Datelike, Timelike, Utc};
use lethe_common::ids::RequestId;
use serde::Serialize;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use zip::write::{SimpleFileOptions, StreamWriter};
use zip::{CompressionMethod, ZipWriter};

/// Bytes sent out at once.
const OUTPUT_CHUNK: usize = 1024 * 1024;
/// The largest record accepted (one line of staged NDJSON).
const MAX_RECORD: usize = 256 * 1024 * 1024;

/// What the assembler sends the writer.
#[derive(Debug)]
pub(crate) enum Command {
    /// Starts an entry.
    Begin(EntrySpec),
    /// The next bytes of the current entry (raw for files and text, staged NDJSON for JSON and
    /// CSV entries).
    Data(Bytes),
    /// Ends the current entry.
    End,
    /// Writes the manifest and the central directory.
    Finish,
}

/// One entry of the archive.
#[derive(Debug, Clone)]
pub(crate) struct EntrySpec {
    /// Its path inside the archive.
    pub path: String,
    /// What it holds.
    pub kind: EntryKind,
    /// What must arrive (checked at its end).
    pub expected: Expected,
}

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// A file, stored as it is (already compressed more often than not).
    File,
    /// Text written by the assembler (README), compressed.
    Text,
    /// Collection `collection` as a JSON array, from its NDJSON.
    Json {
        /// Index of the collection; its JSON entry comes before its CSV entry.
        collection: usize,
    },
    /// Collection `collection` as CSV, from the same NDJSON again.
    Csv {
        /// Index of the collection.
        collection: usize,
    },
}

/// What an entry's input must amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expected {
    /// Exactly this many bytes (a file).
    Bytes(u64),
    /// Exactly this many records, from this many staged bytes (a collection).
    Records {
        /// Records (lines).
        records: u64,
        /// Staged NDJSON bytes.
        bytes: u64,
    },
    /// Whatever comes (text).
    Any,
}

/// The manifest's fixed part, known before the archive is written.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ManifestHead {
    /// Format of the archive.
    pub format: &'static str,
    /// The request.
    pub request_id: RequestId,
    /// When the archive was made.
    pub generated_at: DateTime<Utc>,
    /// Per store, per collection: how many records and where they are.
    pub stores: BTreeMap<String, StoreManifest>,
}

/// One store in the manifest.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StoreManifest {
    /// `postgres`, `mysql`, `redis`, `s3`.
    pub kind: String,
    /// By data-map name.
    pub collections: BTreeMap<String, CollectionManifest>,
}

/// One collection in the manifest.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CollectionManifest {
    /// Records (rows, keys) or objects.
    pub records: u64,
    /// The entries holding it.
    pub entries: Vec<String>,
}

/// One entry as the manifest lists it.
#[derive(Debug, Clone, Serialize)]
struct EntryRecord {
    path: String,
    size: u64,
    sha256: String,
}

#[derive(Serialize)]
struct Manifest<'a> {
    #[serde(flatten)]
    head: &'a ManifestHead,
    files: &'a [EntryRecord],
}

/// What was written.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    /// Size of the archive.
    pub bytes: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
    /// Its entries, the manifest included.
    pub entries: u64,
}

/// Why the archive could not be written. Messages name entries' roles and positions, never a
/// value or an object key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArchiveError {
    /// The commands stopped before `Finish` (the assembler failed or was cancelled).
    #[error("the archive's input ended before the archive was complete")]
    InputClosed,
    /// Nobody takes the output any more (the upload failed or was cancelled).
    #[error("the archive's output was closed")]
    OutputClosed,
    /// The zip writer failed.
    #[error("cannot write the zip archive: {0}")]
    Zip(String),
    /// The staged data is not what its fragment says.
    #[error("{0}")]
    Data(String),
}

impl From<io::Error> for ArchiveError {
    fn from(error: io::Error) -> Self {
        if error.kind() == io::ErrorKind::BrokenPipe {
            ArchiveError::OutputClosed
        } else {
            ArchiveError::Zip(format!("I/O error: {}", error.kind()))
        }
    }
}

impl From<zip::result::ZipError> for ArchiveError {
    fn from(error: zip::result::ZipError) -> Self {
        match error {
            zip::result::ZipError::Io(error) => error.into(),
            // Other messages can quote an entry name, which can hold an identifier.
            _ => ArchiveError::Zip("invalid entry".to_owned()),
        }
    }
}

/// Writes the archive from `commands` to `output`; returns its size and SHA-256. Runs on a
/// blocking thread: `commands` and `output` are drained and filled by async tasks.
pub(crate) fn write(
    mut commands: mpsc::Receiver<Command>,
    output: mpsc::Sender<Bytes>,
    head: ManifestHead,
) -> Result<Summary, ArchiveError> {
    let mut archive = Archive::new(output, &head)?;
    loop {
        match commands.blocking_recv() {
            None => return Err(ArchiveError::InputClosed),
            Some(Command::Begin(spec)) => archive.begin(spec)?,
            Some(Command::Data(bytes)) => archive.data(&bytes)?,
            Some(Command::End) => archive.end()?,
            Some(Command::Finish) => return archive.finish(&head),
        }
    }
}

/// The archive's output: chunks to the uploader, hashed and counted on the way.
struct Output {
    tx: mpsc::Sender<Bytes>,
    buffer: Vec<u8>,
    hasher: Sha256,
    bytes: u64,
}

impl Output {
    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(OUTPUT_CHUNK));
        self.tx
            .blocking_send(Bytes::from(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        self.hasher.update(buf);
        self.bytes += buf.len() as u64;
        if self.buffer.len() >= OUTPUT_CHUNK {
            self.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// The entry being written.
struct Open {
    spec: EntrySpec,
    hasher: Sha256,
    size: u64,
    received: u64,
    records: u64,
    partial: Vec<u8>,
    keys: KeyUnion,
    header: Vec<String>,
}

/// The keys of a collection's records, in order of first appearance: the CSV header.
#[derive(Debug, Default, Clone)]
struct KeyUnion {
    order: Vec<String>,
    seen: HashSet<String>,
}

impl KeyUnion {
    fn add(&mut self, key: &str) {
        if !self.seen.contains(key) {
            self.seen.insert(key.to_owned());
            self.order.push(key.to_owned());
        }
    }
}

struct Archive {
    zip: ZipWriter<StreamWriter<Output>>,
    time: zip::DateTime,
    paths: HashSet<String>,
    entries: Vec<EntryRecord>,
    headers: BTreeMap<usize, Vec<String>>,
    open: Option<Open>,
}

impl Archive {
    fn new(output: mpsc::Sender<Bytes>, head: &ManifestHead) -> Result<Self, ArchiveError> {
        let output = Output {
            tx: output,
            buffer: Vec::with_capacity(OUTPUT_CHUNK),
            hasher: Sha256::new(),
            bytes: 0,
        };
        let at = head.generated_at;
        let time = zip::DateTime::from_date_and_time(
            u16::try_from(at.year()).unwrap_or(1980).clamp(1980, 2107),
            at.month() as u8,
            at.day() as u8,
            at.hour() as u8,
            at.minute() as u8,
            at.second() as u8,
        )
        .unwrap_or_default();
        Ok(Self {
            zip: ZipWriter::new_stream(output),
            time,
            paths: HashSet::new(),
            entries: Vec::new(),
            headers: BTreeMap::new(),
            open: None,
        })
    }

    fn options(&self, kind: EntryKind, large: bool) -> SimpleFileOptions {
        let options = SimpleFileOptions::default()
            .last_modified_time(self.time)
            .unix_permissions(0o644)
            .large_file(large);
        match kind {
            EntryKind::File => options.compression_method(CompressionMethod::Stored),
            EntryKind::Text => options.compression_method(CompressionMethod::Deflated),
            // The fastest level: text compresses well even so, and the archive is written at
            // the speed of the stores.
            EntryKind::Json { .. } | EntryKind::Csv { .. } => options
                .compression_method(CompressionMethod::Deflated)
                .compression_level(Some(1)),
        }
    }

    fn begin(&mut self, spec: EntrySpec) -> Result<(), ArchiveError> {
        if self.open.is_some() {
            return Err(ArchiveError::Data(
                "an entry began before the previous one ended".to_owned(),
            ));
        }
        if !self.paths.insert(spec.path.clone()) {
            return Err(ArchiveError::Data(
                "two entries of the archive have the same path".to_owned(),
            ));
        }
        let header = match spec.kind {
            EntryKind::Csv { collection } => {
                self.headers.get(&collection).cloned().ok_or_else(|| {
                    ArchiveError::Data(
                        "a CSV entry came before the JSON entry of its collection".to_owned(),
                    )
                })?
            }
            _ => Vec::new(),
        };
        // ZIP64 when the entry may reach 4 GiB: a file by its size; a JSON array by its
        // records (each line plus a separator); a CSV table by its records too (a field is never
        // longer than its JSON text, and each row has a comma per column and a line end).
        let bound = match (spec.kind, spec.expected) {
            (_, Expected::Bytes(size)) => size,
            (EntryKind::Csv { .. }, Expected::Records { records, bytes }) => {
                let columns = header.len() as u64;
                let header_bytes: u64 = header.iter().map(|h| 2 * h.len() as u64 + 3).sum();
                bytes + records * (columns + 2) + header_bytes + 2
            }
            (_, Expected::Records { records, bytes }) => bytes + 2 * records + 16,
            (_, Expected::Any) => 0,
        };
        let large = bound >= zip::ZIP64_BYTES_THR;
        self.zip
            .start_file(spec.path.as_str(), self.options(spec.kind, large))?;
        let mut open = Open {
            spec,
            hasher: Sha256::new(),
            size: 0,
            received: 0,
            records: 0,
            partial: Vec::new(),
            keys: KeyUnion::default(),
            header,
        };
        match open.spec.kind {
            EntryKind::Json { .. } => put(&mut self.zip, &mut open, b"[")?,
            EntryKind::Csv { .. } if !open.header.is_empty() => {
                let mut line = Vec::new();
                for (i, key) in open.header.iter().enumerate() {
                    if i > 0 {
                        line.push(b',');
                    }
                    csv_cell(&mut line, key);
                }
                line.extend_from_slice(b"\r\n");
                put(&mut self.zip, &mut open, &line)?;
            }
            _ => {}
        }
        self.open = Some(open);
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> Result<(), ArchiveError> {
        let Some(mut open) = self.open.take() else {
            return Err(ArchiveError::Data(
                "data arrived outside an entry".to_owned(),
            ));
        };
        open.received += bytes.len() as u64;
        match open.spec.kind {
            EntryKind::File | EntryKind::Text => put(&mut self.zip, &mut open, bytes)?,
            EntryKind::Json { .. } | EntryKind::Csv { .. } => {
                let mut rest = bytes;
                while let Some(i) = rest.iter().position(|b| *b == b'\n') {
                    let (line, tail) = rest.split_at(i);
                    rest = &tail[1..];
                    if open.partial.is_empty() {
                        record(&mut self.zip, &mut open, line)?;
                    } else {
                        let mut whole = std::mem::take(&mut open.partial);
                        whole.extend_from_slice(line);
                        record(&mut self.zip, &mut open, &whole)?;
                        whole.clear();
                        open.partial = whole;
                    }
                }
                open.partial.extend_from_slice(rest);
                if open.partial.len() > MAX_RECORD {
                    return Err(ArchiveError::Data(format!(
                        "entry {}: a record is larger than {MAX_RECORD} bytes",
                        self.entries.len() + 1
                    )));
                }
            }
        }
        self.open = Some(open);
        Ok(())
    }

    fn end(&mut self) -> Result<(), ArchiveError> {
        let Some(mut open) = self.open.take() else {
            return Err(ArchiveError::Data(
                "an entry ended that had not begun".to_owned(),
            ));
        };
        if !open.partial.is_empty() {
            let last = std::mem::take(&mut open.partial);
            record(&mut self.zip, &mut open, &last)?;
        }
        if let EntryKind::Json { collection } = open.spec.kind {
            let close: &[u8] = if open.records == 0 { b"]\n" } else { b"\n]\n" };
            put(&mut self.zip, &mut open, close)?;
            self.headers
                .insert(collection, std::mem::take(&mut open.keys.order));
        }
        let position = self.entries.len() + 1;
        match open.spec.expected {
            Expected::Bytes(size) if size != open.received => {
                return Err(ArchiveError::Data(format!(
                    "entry {position}: the staged file has {} bytes, its fragment says {size}",
                    open.received
                )));
            }
            Expected::Records { records, bytes }
                if records != open.records || bytes != open.received =>
            {
                return Err(ArchiveError::Data(format!(
                    "entry {position}: the staged collection has {} records in {} bytes, its fragment says {records} in {bytes}",
                    open.records, open.received
                )));
            }
            _ => {}
        }
        self.entries.push(EntryRecord {
            path: open.spec.path,
            size: open.size,
            sha256: hex::encode(open.hasher.finalize()),
        });
        Ok(())
    }

    fn finish(mut self, head: &ManifestHead) -> Result<Summary, ArchiveError> {
        if self.open.is_some() {
            return Err(ArchiveError::Data(
                "the archive ended inside an entry".to_owned(),
            ));
        }
        let manifest = serde_json::to_vec_pretty(&Manifest {
            head,
            files: &self.entries,
        })
        .map_err(|e| ArchiveError::Data(format!("cannot write the manifest: {e}")))?;
        self.zip
            .start_file("manifest.json", self.options(EntryKind::Text, false))?;
        self.zip.write_all(&manifest)?;
        let mut output = self.zip.finish()?.into_inner();
        output.flush()?;
        Ok(Summary {
            bytes: output.bytes,
            sha256: hex::encode(output.hasher.finalize()),
            entries: self.entries.len() as u64 + 1,
        })
    }
}

/// Writes `bytes` into the open entry, hashing and counting them.
fn put(
    zip: &mut ZipWriter<StreamWriter<Output>>,
    open: &mut Open,
    bytes: &[u8],
) -> Result<(), ArchiveError> {
    zip.write_all(bytes)?;
    open.hasher.update(bytes);
    open.size += bytes.len() as u64;
    Ok(())
}

/// One NDJSON record into a JSON or CSV entry.
fn record(
    zip: &mut ZipWriter<StreamWriter<Output>>,
    open: &mut Open,
    line: &[u8],
) -> Result<(), ArchiveError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    open.records += 1;
    let position = open.records;
    let not_an_object = || {
        ArchiveError::Data(format!(
            "record {position} of a staged collection is not a JSON object"
        ))
    };
    match open.spec.kind {
        EntryKind::Json { .. } => {
            let mut deserializer = serde_json::Deserializer::from_slice(line);
            KeySeed(&mut open.keys)
                .deserialize(&mut deserializer)
                .and_then(|()| deserializer.end())
                .map_err(|_| not_an_object())?;
            let separator: &[u8] = if position == 1 { b"\n" } else { b",\n" };
            put(zip, open, separator)?;
            put(zip, open, line)?;
        }
        EntryKind::Csv { .. } => {
            // Values as the store wrote them: a number keeps its digits (no round trip
            // through a float), a nested value its JSON text.
            let object: HashMap<String, &RawValue> =
                serde_json::from_slice(line).map_err(|_| not_an_object())?;
            if object.keys().any(|k| !open.keys_in_header(k)) {
                return Err(ArchiveError::Data(format!(
                    "record {position} of a staged collection has a field its first reading did not"
                )));
            }
            let mut row = Vec::with_capacity(line.len() + 16);
            for (i, key) in open.header.iter().enumerate() {
                if i > 0 {
                    row.push(b',');
                }
                let Some(raw) = object.get(key) else {
                    continue;
                };
                let raw = raw.get().trim();
                if raw == "null" {
                    continue;
                }
                if raw.starts_with('"') {
                    let text: String = serde_json::from_str(raw).map_err(|_| not_an_object())?;
                    csv_cell(&mut row, &text);
                } else {
                    csv_cell(&mut row, raw);
                }
            }
            row.extend_from_slice(b"\r\n");
            put(zip, open, &row)?;
        }
        EntryKind::File | EntryKind::Text => {}
    }
    Ok(())
}

impl Open {
    fn keys_in_header(&self, key: &str) -> bool {
        self.header.iter().any(|h| h == key)
    }
}

/// One CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break.
fn csv_cell(out: &mut Vec<u8>, text: &str) {
    if text.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        for byte in text.bytes() {
            if byte == b'"' {
                out.push(b'"');
            }
            out.push(byte);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}

/// Reads a JSON object's keys into a [`KeyUnion`], skipping its values.
struct KeySeed<'a>(&'a mut KeyUnion);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            self.0.add(&key);
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> ManifestHead {
        ManifestHead {
            format: "lethe-export/1",
            request_id: RequestId::new(),
            generated_at: Utc::now(),
            stores: BTreeMap::new(),
        }
    }

    /// Runs the writer over `commands` and returns the archive.
    fn run(commands: Vec<Command>) -> Result<(Vec<u8>, Summary), ArchiveError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(ArchiveError::from)?;
        let (tx, rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        let writer = std::thread::spawn(move || write(rx, out_tx, head()));
        let archive = runtime.block_on(async move {
            let collect = async {
                let mut archive = Vec::new();
                while let Some(chunk) = out_rx.recv().await {
                    archive.extend_from_slice(&chunk);
                }
                archive
            };
            let send = async {
                for command in commands {
                    if tx.send(command).await.is_err() {
                        break;
                    }
                }
                drop(tx);
            };
            let (archive, ()) = tokio::join!(collect, send);
            archive
        });
        let summary = writer
            .join()
            .map_err(|_| ArchiveError::Data("panicked".to_owned()))??;
        Ok((archive, summary))
    }

    fn entry(path: &str, kind: EntryKind, expected: Expected) -> Command {
        Command::Begin(EntrySpec {
            path: path.to_owned(),
            kind,
            expected,
        })
    }

    #[test]
    fn ndjson_becomes_a_json_array_and_a_csv_table() {
        let ndjson =
            "{\"id\":1,\"name\":\"a, \\\"b\\\"\"}\n{\"id\":2,\"extra\":[1,2],\"name\":null}\n";
        let records = Expected::Records {
            records: 2,
            bytes: ndjson.len() as u64,
        };
        let (first, second) = ndjson.split_at(10);
        let (archive, summary) = run(vec![
            entry("s/c.json", EntryKind::Json { collection: 0 }, records),
            Command::Data(Bytes::copy_from_slice(first.as_bytes())),
            Command::Data(Bytes::copy_from_slice(second.as_bytes())),
            Command::End,
            entry("s/c.csv", EntryKind::Csv { collection: 0 }, records),
            Command::Data(Bytes::copy_from_slice(ndjson.as_bytes())),
            Command::End,
            Command::Finish,
        ])
        .unwrap();
        assert_eq!(summary.bytes, archive.len() as u64);
        assert_eq!(summary.sha256, hex::encode(Sha256::digest(&archive)));
        assert_eq!(summary.entries, 3);
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive)).unwrap();
        let read = |zip: &mut zip::ZipArchive<std::io::Cursor<Vec<u8>>>, name: &str| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut zip.by_name(name).unwrap(), &mut text).unwrap();
            text
        };
        let json: serde_json::Value = serde_json::from_str(&read(&mut zip, "s/c.json")).unwrap();
        assert_eq!(json[1]["extra"], serde_json::json!([1, 2]));
        assert_eq!(
            read(&mut zip, "s/c.csv"),
            "id,name,extra\r\n1,\"a, \"\"b\"\"\",\r\n2,,\"[1,2]\"\r\n"
        );
        let manifest: serde_json::Value =
            serde_json::from_str(&read(&mut zip, "manifest.json")).unwrap();
        assert_eq!(manifest["files"][0]["path"], "s/c.json");
    }

    #[test]
    fn an_empty_collection_is_an_empty_array() {
        let none = Expected::Records {
            records: 0,
            bytes: 0,
        };
        let (archive, _) = run(vec![
            entry("s/e.json", EntryKind::Json { collection: 3 }, none),
            Command::End,
            entry("s/e.csv", EntryKind::Csv { collection: 3 }, none),
            Command::End,
            Command::Finish,
        ])
        .unwrap();
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive)).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut zip.by_name("s/e.json").unwrap(), &mut text).unwrap();
        assert_eq!(text, "[]\n");
    }

    #[test]
    fn a_truncated_file_or_an_unfinished_input_fails() {
        let short = run(vec![
            entry("f", EntryKind::File, Expected::Bytes(5)),
            Command::Data(Bytes::from_static(b"abc")),
            Command::End,
            Command::Finish,
        ]);
        assert!(matches!(short, Err(ArchiveError::Data(_))), "{short:?}");
        let unfinished = run(vec![entry("f", EntryKind::File, Expected::Bytes(5))]);
        assert!(
            matches!(unfinished, Err(ArchiveError::InputClosed)),
            "{unfinished:?}"
        );
    }
}
