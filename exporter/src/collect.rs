//! A collect task's sink: each collection's records streamed as NDJSON into a staging object
//! (multipart while it grows, so no collection is ever held in memory), each object of an
//! object store copied into the staging area, and the fragment manifest written last.

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use chrono::Utc;
use lethe_common::ids::{RequestId, StoreName};
use lethe_common::s3::{CopySource, ObjectWriter, TransferError, WriterOptions};
use lethe_common::worker::TaskError;
use lethe_stores::{CollectSink, SourceObject};

use crate::staging::{self, Fragment, Names, StagedCollection, StagedFile};

/// Parts of staged NDJSON: one in flight per collection, the collections of a store one after
/// the other, so a collect task holds at most two parts.
const STAGING_WRITER: WriterOptions = WriterOptions {
    part_size: 8 * 1024 * 1024,
    parallel_parts: 1,
    sign_payload: true,
};

/// Server-side copies of a store's objects in flight at once: the S3 service does the work, so
/// a few at a time use its cores without costing this process memory.
const PARALLEL_COPIES: usize = 4;

/// Turns a transfer failure into a task error saying where it happened (`place`, never a key).
pub(crate) fn transfer_error(place: &str, error: TransferError) -> TaskError {
    if error.retryable
        || error.is_not_found()
        || error.code.as_deref() == Some("PreconditionFailed")
    {
        TaskError::Transient(anyhow::Error::new(error).context(place.to_owned()))
    } else {
        TaskError::Permanent {
            code: "s3_error",
            reason: format!("{place}: {error}"),
        }
    }
}

/// What a finished collect staged.
#[derive(Debug)]
pub(crate) struct Staged {
    /// Bytes staged (NDJSON and copied objects).
    pub bytes: u64,
    /// The fragment, as written.
    pub fragment: Fragment,
}

/// Writes one store's fragment into the staging area.
pub(crate) struct StagingSink {
    client: Client,
    bucket: String,
    request: RequestId,
    store: StoreName,
    kind: &'static str,
    object_store: bool,
    names: Names,
    current: Option<Current>,
    collections: Vec<StagedCollection>,
    files: Vec<StagedFile>,
    bytes: u64,
    /// Server-side copies started and not yet awaited (awaited before the manifest is written;
    /// aborted if the sink is dropped).
    copies: tokio::task::JoinSet<Result<(), TransferError>>,
}

struct Current {
    name: String,
    stem: Option<String>,
    object: Option<String>,
    writer: Option<ObjectWriter>,
    records: u64,
    bytes: u64,
}

impl StagingSink {
    /// A sink for `store` (of data-map kind `kind`) of `request`, writing to `bucket`.
    pub(crate) fn new(
        client: Client,
        bucket: &str,
        request: RequestId,
        store: StoreName,
        kind: &'static str,
    ) -> Self {
        Self {
            client,
            bucket: bucket.to_owned(),
            request,
            store,
            kind,
            object_store: kind == "s3",
            names: Names::default(),
            current: None,
            collections: Vec::new(),
            files: Vec::new(),
            bytes: 0,
            copies: tokio::task::JoinSet::new(),
        }
    }

    fn fail(&self, error: TransferError) -> TaskError {
        transfer_error(&format!("store `{}`", self.store), error)
    }

    /// Writes the fragment manifest (last: its presence tells the assembler the store is
    /// complete) and returns what was staged.
    pub(crate) async fn finish(mut self) -> Result<Staged, TaskError> {
        if self.current.is_some() {
            self.end().await?;
        }
        while !self.copies.is_empty() {
            self.await_copy().await?;
        }
        let fragment = Fragment {
            version: 1,
            request_id: self.request,
            store: self.store.clone(),
            kind: self.kind.to_owned(),
            collected_at: Utc::now(),
            collections: std::mem::take(&mut self.collections),
            files: std::mem::take(&mut self.files),
        };
        let body = serde_json::to_vec_pretty(&fragment).map_err(|e| TaskError::Permanent {
            code: "internal",
            reason: format!("cannot write the fragment manifest: {e}"),
        })?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(staging::manifest_key(self.request, &self.store))
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.fail(TransferError::from_sdk("writing the fragment manifest", &e)))?;
        Ok(Staged {
            bytes: self.bytes,
            fragment,
        })
    }

    /// Waits for one of the server-side copies in flight.
    async fn await_copy(&mut self) -> Result<(), TaskError> {
        match self.copies.join_next().await {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(error))) => Err(self.fail(error)),
            Some(Err(_)) => Err(TaskError::Transient(anyhow::anyhow!(
                "store `{}`: a copy into the staging area stopped",
                self.store
            ))),
        }
    }

    /// Abandons the collection being written, if any (after a failure).
    pub(crate) async fn abandon(mut self) {
        self.copies.shutdown().await;
        if let Some(writer) = self.current.take().and_then(|c| c.writer) {
            writer.abort().await;
        }
    }
}

impl CollectSink for StagingSink {
    async fn begin(&mut self, name: &str) -> Result<(), TaskError> {
        if self.current.is_some() {
            self.end().await?;
        }
        let stem = (!self.object_store).then(|| self.names.stem(name));
        self.current = Some(Current {
            name: name.to_owned(),
            stem,
            object: None,
            writer: None,
            records: 0,
            bytes: 0,
        });
        Ok(())
    }

    async fn record(&mut self, json: &[u8]) -> Result<(), TaskError> {
        let Some(current) = self.current.as_mut() else {
            return Err(TaskError::Permanent {
                code: "internal",
                reason: "a record arrived outside a collection".to_owned(),
            });
        };
        let writer = match &mut current.writer {
            Some(writer) => writer,
            None => {
                // Staged only once there is a record: an empty collection is no object.
                let stem = current.stem.as_deref().unwrap_or("records");
                let key = format!(
                    "{}{stem}.ndjson",
                    staging::store_prefix(self.request, &self.store)
                );
                current.object = Some(key.clone());
                current.writer.insert(
                    ObjectWriter::new(self.client.clone(), &self.bucket, &key, STAGING_WRITER)
                        .content_type("application/x-ndjson"),
                )
            }
        };
        let written = async {
            writer.write(json).await?;
            writer.write(b"\n").await
        }
        .await;
        written.map_err(|e| transfer_error(&format!("store `{}`", self.store), e))?;
        current.records += 1;
        current.bytes += json.len() as u64 + 1;
        Ok(())
    }

    async fn end(&mut self) -> Result<(), TaskError> {
        let Some(current) = self.current.take() else {
            return Ok(());
        };
        if let Some(writer) = current.writer {
            writer.finish().await.map_err(|e| self.fail(e))?;
        }
        self.bytes += current.bytes;
        self.collections.push(StagedCollection {
            name: current.name,
            stem: current.stem,
            object: current.object,
            records: current.records,
            bytes: current.bytes,
        });
        Ok(())
    }

    async fn object(&mut self, object: SourceObject<'_>) -> Result<(), TaskError> {
        let path = self.names.file_path(object.key);
        let key = format!(
            "{}files/{}",
            staging::store_prefix(self.request, &self.store),
            object.key
        );
        let size = if object.shares_lethe_credentials {
            // Inside the S3 service, conditional on the ETag listed, a few at a time; awaited
            // before the fragment manifest names them.
            if self.copies.len() >= PARALLEL_COPIES {
                self.await_copy().await?;
            }
            let client = self.client.clone();
            let (source_bucket, source_key) = (object.bucket.to_owned(), object.key.to_owned());
            let e_tag = object.e_tag.map(str::to_owned);
            let (bucket, target) = (self.bucket.clone(), key.clone());
            let size = object.size;
            self.copies.spawn(async move {
                let source = CopySource {
                    bucket: &source_bucket,
                    key: &source_key,
                    size,
                    e_tag: e_tag.as_deref(),
                };
                lethe_common::s3::copy_object(&client, source, &bucket, &target).await
            });
            object.size
        } else {
            // Another endpoint or other credentials: through this process, part by part.
            self.stream_copy(&object, &key).await?
        };
        self.bytes += size;
        let collection = self
            .current
            .as_ref()
            .map(|c| c.name.clone())
            .unwrap_or_default();
        if let Some(current) = self.current.as_mut() {
            current.records += 1;
        }
        self.files.push(StagedFile {
            collection,
            path,
            object: key,
            size,
        });
        Ok(())
    }
}

impl StagingSink {
    async fn stream_copy(&self, object: &SourceObject<'_>, key: &str) -> Result<u64, TaskError> {
        let mut source = object
            .client
            .get_object()
            .bucket(object.bucket)
            .key(object.key)
            .set_if_match(object.e_tag.map(str::to_owned))
            .send()
            .await
            .map_err(|e| self.fail(TransferError::from_sdk("reading an object", &e)))?
            .body;
        let mut writer = ObjectWriter::new(self.client.clone(), &self.bucket, key, STAGING_WRITER);
        loop {
            let chunk = match source.next().await {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(_)) => {
                    writer.abort().await;
                    return Err(self.fail(TransferError::other(
                        "reading an object",
                        "the download broke off",
                        true,
                    )));
                }
            };
            if let Err(error) = writer.write(&chunk).await {
                writer.abort().await;
                return Err(self.fail(error));
            }
        }
        writer
            .finish()
            .await
            .map(|uploaded| uploaded.bytes)
            .map_err(|e| self.fail(e))
    }
}
