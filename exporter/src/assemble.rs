//! The assemble task: every store's fragment streamed into one zip, uploaded part by part while
//! it is written, then the staging area removed.
//!
//! Three tasks run side by side: a feeder reads the staged objects from S3 and hands their
//! bytes to the zip writer (a blocking thread, [`crate::archive`]), whose output an uploader
//! sends on as the parts of a multipart upload. Bounded channels between them keep memory
//! flat: a few chunks in each channel and the parts in flight.
//!
//! Safe to run again after a crash at any point:
//! - the multipart upload's id is recorded in the staging area as soon as it exists, and a run
//!   aborts the upload a dead run left behind before starting its own;
//! - the archive is complete before the staging area is touched, and the fragment manifests
//!   are deleted first: a run that finds some of them gone and the archive present knows a
//!   previous run finished, and reports that archive (hashing it again) instead of failing.

use std::collections::BTreeMap;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use chrono::Utc;
use lethe_common::datamap::DataMap;
use lethe_common::ids::RequestId;
use lethe_common::messages::TaskReport;
use lethe_common::s3::{ObjectWriter, TransferError, WriterOptions};
use lethe_common::worker::TaskError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::archive::{
    self, ArchiveError, CollectionManifest, Command, EntryKind, EntrySpec, Expected, ManifestHead,
    StoreManifest, Summary,
};
use crate::collect::transfer_error;
use crate::readme::{self, StoreText};
use crate::staging::{self, Fragment};

/// The archive's parts: 8 MiB, four in flight while the next one fills. An S3 service may hash
/// and write each part of a request on one core, so parts in flight are what let it use more
/// than one; 40 MiB of parts is the bulk of the exporter's memory.
const ARCHIVE_WRITER: WriterOptions = WriterOptions {
    part_size: 8 * 1024 * 1024,
    parallel_parts: 4,
    sign_payload: true,
};
/// Chunks waiting for the zip writer, and for the uploader.
const INPUT_CHUNKS: usize = 8;
const OUTPUT_CHUNKS: usize = 4;
/// The multipart upload a running assemble records, so the next run can abort it if this one
/// dies.
#[derive(Debug, Serialize, Deserialize)]
struct UploadRecord {
    key: String,
    upload_id: String,
}

/// Where the assembler reads and writes.
pub(crate) struct Assembler<'a> {
    /// Lethe's bucket.
    pub client: &'a Client,
    /// Its name.
    pub bucket: &'a str,
    /// The data map (which stores must have a fragment, and what the README says of them).
    pub map: &'a DataMap,
}

fn fail(error: TransferError) -> TaskError {
    transfer_error("assembling the archive", error)
}

/// One entry to write and where its bytes come from.
struct Planned {
    spec: EntrySpec,
    source: Source,
}

enum Source {
    Text(Bytes),
    Object(String),
    Nothing,
}

impl Assembler<'_> {
    /// Assembles the archive of `request` and reports its key, size and SHA-256.
    pub(crate) async fn run(&self, request: RequestId) -> Result<TaskReport, TaskError> {
        self.abort_stale_upload(request).await?;
        let key = staging::archive_key(request);
        let mut fragments = Vec::with_capacity(self.map.stores.len());
        let mut missing = Vec::new();
        for store in self.map.stores.keys() {
            match self.read_fragment(request, store).await? {
                Some(fragment) => fragments.push(fragment),
                None => missing.push(store.as_str()),
            }
        }
        let (bytes, sha256, entries) = if missing.is_empty() {
            let summary = self.build(request, &key, &fragments).await?;
            (summary.bytes, summary.sha256, Some(summary.entries))
        } else if self.exists(&key).await? {
            // A previous run completed the archive and had begun removing the staging area.
            tracing::info!("the archive was completed by an earlier run; reporting it");
            let (bytes, sha256) = self.hash_archive(&key).await?;
            (bytes, sha256, None)
        } else {
            return Err(TaskError::Transient(anyhow::anyhow!(
                "the fragments of {} store(s) are not staged: {}",
                missing.len(),
                missing.join(", ")
            )));
        };
        self.remove_staging(request).await?;
        let mut counts = BTreeMap::from([("bytes".to_owned(), bytes)]);
        if let Some(entries) = entries {
            counts.insert("entries".to_owned(), entries);
        }
        Ok(TaskReport {
            counts,
            bytes: Some(bytes),
            object_key: Some(key),
            sha256: Some(sha256),
            ..TaskReport::default()
        })
    }

    async fn read_small(
        &self,
        key: &str,
        action: &'static str,
    ) -> Result<Option<Vec<u8>>, TaskError> {
        let object = match self
            .client
            .get_object()
            .bucket(self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(object) => object,
            Err(error) => {
                let error = TransferError::from_sdk(action, &error);
                return if error.is_not_found() {
                    Ok(None)
                } else {
                    Err(fail(error))
                };
            }
        };
        let body = object
            .body
            .collect()
            .await
            .map_err(|_| fail(TransferError::other(action, "the download broke off", true)))?;
        Ok(Some(body.into_bytes().to_vec()))
    }

    async fn read_fragment(
        &self,
        request: RequestId,
        store: &lethe_common::ids::StoreName,
    ) -> Result<Option<Fragment>, TaskError> {
        let key = staging::manifest_key(request, store);
        let Some(body) = self.read_small(&key, "reading a fragment manifest").await? else {
            return Ok(None);
        };
        let fragment: Fragment =
            serde_json::from_slice(&body).map_err(|_| TaskError::Permanent {
                code: "staging_mismatch",
                reason: format!("the fragment manifest of store `{store}` is unreadable"),
            })?;
        if fragment.request_id != request || &fragment.store != store {
            return Err(TaskError::Permanent {
                code: "staging_mismatch",
                reason: format!("the fragment manifest of store `{store}` is another's"),
            });
        }
        Ok(Some(fragment))
    }

    /// Aborts the multipart upload of a run that died, if one is recorded.
    async fn abort_stale_upload(&self, request: RequestId) -> Result<(), TaskError> {
        let record_key = staging::upload_key(request);
        let Some(body) = self
            .read_small(&record_key, "reading the upload record")
            .await?
        else {
            return Ok(());
        };
        if let Ok(record) = serde_json::from_slice::<UploadRecord>(&body) {
            tracing::info!("aborting the archive upload of an earlier run");
            lethe_common::s3::abort_upload(
                self.client,
                self.bucket,
                &record.key,
                &record.upload_id,
            )
            .await;
        }
        self.client
            .delete_object()
            .bucket(self.bucket)
            .key(&record_key)
            .send()
            .await
            .map_err(|e| fail(TransferError::from_sdk("deleting the upload record", &e)))?;
        Ok(())
    }

    async fn exists(&self, key: &str) -> Result<bool, TaskError> {
        match self
            .client
            .head_object()
            .bucket(self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(error) => {
                let not_found = error
                    .raw_response()
                    .is_some_and(|r| r.status().as_u16() == 404);
                if not_found {
                    Ok(false)
                } else {
                    Err(fail(TransferError::from_sdk(
                        "checking the archive",
                        &error,
                    )))
                }
            }
        }
    }

    /// Size and SHA-256 of the archive as stored, read as a stream.
    async fn hash_archive(&self, key: &str) -> Result<(u64, String), TaskError> {
        let mut body = self
            .client
            .get_object()
            .bucket(self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| fail(TransferError::from_sdk("reading the archive", &e)))?
            .body;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|_| {
                fail(TransferError::other(
                    "reading the archive",
                    "the download broke off",
                    true,
                ))
            })?;
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
        }
        Ok((bytes, hex::encode(hasher.finalize())))
    }

    /// Deletes the fragment manifests first (see the module's notes), then everything else
    /// under the request's staging prefix.
    async fn remove_staging(&self, request: RequestId) -> Result<(), TaskError> {
        let manifests: Vec<String> = self
            .map
            .stores
            .keys()
            .map(|store| staging::manifest_key(request, store))
            .collect();
        self.delete(&manifests).await?;
        let rest = lethe_common::s3::list_keys_under(
            self.client,
            self.bucket,
            &staging::request_prefix(request),
        )
        .await
        .map_err(|e| fail(TransferError::from_sdk("listing the staging area", &e)))?;
        self.delete(&rest).await
    }

    async fn delete(&self, keys: &[String]) -> Result<(), TaskError> {
        lethe_common::s3::delete_keys(self.client, self.bucket, keys)
            .await
            .map_err(fail)
    }

    /// Writes the archive and completes its upload.
    async fn build(
        &self,
        request: RequestId,
        key: &str,
        fragments: &[Fragment],
    ) -> Result<Summary, TaskError> {
        let generated_at = Utc::now();
        let (entries, head) = self.plan(request, generated_at, fragments);

        let mut writer = ObjectWriter::new(self.client.clone(), self.bucket, key, ARCHIVE_WRITER)
            .content_type("application/zip");
        let upload_id = writer.start().await.map_err(fail)?;
        let record = serde_json::to_vec(&UploadRecord {
            key: key.to_owned(),
            upload_id,
        })
        .map_err(|e| TaskError::Permanent {
            code: "internal",
            reason: format!("cannot record the upload: {e}"),
        })?;
        if let Err(error) = self
            .client
            .put_object()
            .bucket(self.bucket)
            .key(staging::upload_key(request))
            .body(ByteStream::from(record))
            .send()
            .await
        {
            writer.abort().await;
            return Err(fail(TransferError::from_sdk(
                "recording the upload",
                &error,
            )));
        }

        let (commands, command_rx) = mpsc::channel(INPUT_CHUNKS);
        let (output, output_rx) = mpsc::channel::<Bytes>(OUTPUT_CHUNKS);
        let zip = tokio::task::spawn_blocking(move || archive::write(command_rx, output, head));
        let feed = self.feed(&entries, commands);
        let upload = async {
            // Owned here, so a failed upload closes the channel and the zip writer stops.
            let mut output_rx = output_rx;
            while let Some(chunk) = output_rx.recv().await {
                writer.write(&chunk).await.map_err(fail)?;
            }
            Ok::<(), TaskError>(())
        };
        let (fed, uploaded) = tokio::join!(feed, upload);
        let zipped = zip.await;
        let outcome = match (zipped, fed, uploaded) {
            (Ok(Ok(summary)), Ok(()), Ok(())) => Ok(summary),
            (Ok(Err(ArchiveError::InputClosed)), Err(error), _)
            | (Ok(Err(ArchiveError::OutputClosed)), _, Err(error))
            | (Ok(Ok(_)), Err(error), _)
            | (Ok(Ok(_)), _, Err(error)) => Err(error),
            (Ok(Err(ArchiveError::Data(reason))), _, _) => Err(TaskError::Permanent {
                code: "staging_mismatch",
                reason,
            }),
            (Ok(Err(error)), _, _) => Err(TaskError::Transient(anyhow::Error::new(error))),
            (Err(_), _, _) => Err(TaskError::Transient(anyhow::anyhow!(
                "the archive writer stopped abnormally"
            ))),
        };
        let summary = match outcome {
            Ok(summary) => summary,
            Err(error) => {
                writer.abort().await;
                let _ = self
                    .client
                    .delete_object()
                    .bucket(self.bucket)
                    .key(staging::upload_key(request))
                    .send()
                    .await;
                return Err(error);
            }
        };
        let uploaded = writer.finish().await.map_err(fail)?.bytes;
        if uploaded != summary.bytes {
            return Err(TaskError::Transient(anyhow::anyhow!(
                "the archive uploaded has {uploaded} bytes, {} were written",
                summary.bytes
            )));
        }
        Ok(summary)
    }

    /// The entries in archive order (README, then per store its collections as JSON and CSV,
    /// then its files) and the manifest's fixed part.
    fn plan(
        &self,
        request: RequestId,
        generated_at: chrono::DateTime<Utc>,
        fragments: &[Fragment],
    ) -> (Vec<Planned>, ManifestHead) {
        let texts: Vec<StoreText<'_>> = fragments
            .iter()
            .map(|fragment| StoreText {
                fragment,
                store: self.map.stores.get(&fragment.store),
            })
            .collect();
        let readme = readme::render(request, generated_at, &texts);
        let mut entries = vec![Planned {
            spec: EntrySpec {
                path: "README.txt".to_owned(),
                kind: EntryKind::Text,
                expected: Expected::Any,
            },
            source: Source::Text(Bytes::from(readme)),
        }];
        let mut stores = BTreeMap::new();
        let mut index = 0usize;
        for fragment in fragments {
            let store = fragment.store.as_str();
            let mut collections = BTreeMap::new();
            for collection in &fragment.collections {
                let mut paths = Vec::new();
                if let Some(stem) = &collection.stem {
                    let expected = Expected::Records {
                        records: collection.records,
                        bytes: collection.bytes,
                    };
                    let source = || match &collection.object {
                        Some(object) if collection.records > 0 => Source::Object(object.clone()),
                        _ => Source::Nothing,
                    };
                    for (extension, kind) in [
                        ("json", EntryKind::Json { collection: index }),
                        ("csv", EntryKind::Csv { collection: index }),
                    ] {
                        let path = format!("{store}/{stem}.{extension}");
                        paths.push(path.clone());
                        entries.push(Planned {
                            spec: EntrySpec {
                                path,
                                kind,
                                expected,
                            },
                            source: source(),
                        });
                    }
                    index += 1;
                } else {
                    paths.extend(
                        fragment
                            .files
                            .iter()
                            .filter(|f| f.collection == collection.name)
                            .map(|f| format!("{store}/{}", f.path)),
                    );
                }
                collections.insert(
                    collection.name.clone(),
                    CollectionManifest {
                        records: collection.records,
                        entries: paths,
                    },
                );
            }
            for file in &fragment.files {
                entries.push(Planned {
                    spec: EntrySpec {
                        path: format!("{store}/{}", file.path),
                        kind: EntryKind::File,
                        expected: Expected::Bytes(file.size),
                    },
                    source: if file.size > 0 {
                        Source::Object(file.object.clone())
                    } else {
                        Source::Nothing
                    },
                });
            }
            stores.insert(
                store.to_owned(),
                StoreManifest {
                    kind: fragment.kind.clone(),
                    collections,
                },
            );
        }
        let head = ManifestHead {
            format: "lethe-export/1",
            request_id: request,
            generated_at,
            stores,
        };
        (entries, head)
    }

    /// Sends every entry's bytes to the zip writer, in order, then `Finish`.
    async fn feed(
        &self,
        entries: &[Planned],
        commands: mpsc::Sender<Command>,
    ) -> Result<(), TaskError> {
        let stopped =
            || TaskError::Transient(anyhow::anyhow!("the archive writer stopped taking input"));
        for entry in entries {
            commands
                .send(Command::Begin(entry.spec.clone()))
                .await
                .map_err(|_| stopped())?;
            match &entry.source {
                Source::Nothing => {}
                Source::Text(text) => commands
                    .send(Command::Data(text.clone()))
                    .await
                    .map_err(|_| stopped())?,
                Source::Object(key) => {
                    let mut body = self
                        .client
                        .get_object()
                        .bucket(self.bucket)
                        .key(key)
                        .send()
                        .await
                        .map_err(|e| fail(TransferError::from_sdk("reading a staged object", &e)))?
                        .body;
                    while let Some(chunk) = body.next().await {
                        let chunk = chunk.map_err(|_| {
                            fail(TransferError::other(
                                "reading a staged object",
                                "the download broke off",
                                true,
                            ))
                        })?;
                        commands
                            .send(Command::Data(chunk))
                            .await
                            .map_err(|_| stopped())?;
                    }
                }
            }
            commands.send(Command::End).await.map_err(|_| stopped())?;
        }
        commands.send(Command::Finish).await.map_err(|_| stopped())
    }
}
