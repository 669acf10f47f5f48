//! An S3 client for AWS or any S3-compatible server, built from [`S3Settings`] alone (no
//! ambient AWS configuration is read, so what runs is what the file says), and the transfers
//! the workers share: prefix listings, the one batch delete, the one streaming multipart
//! [`ObjectWriter`], server-side copies and presigned downloads.

use std::collections::VecDeque;
use std::time::Duration;

pub use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use secrecy::ExposeSecret;
use tokio::task::JoinHandle;

use crate::config::{ChecksumMode, S3Settings};

/// Builds a client for the configured endpoint.
pub fn client(settings: &S3Settings) -> Client {
    let credentials = Credentials::new(
        settings.access_key_id.clone(),
        settings.secret_access_key.expose_secret().to_owned(),
        None,
        None,
        "lethe-config",
    );
    let (request, response) = match settings.checksums {
        ChecksumMode::WhenRequired => (
            RequestChecksumCalculation::WhenRequired,
            ResponseChecksumValidation::WhenRequired,
        ),
        ChecksumMode::WhenSupported => (
            RequestChecksumCalculation::WhenSupported,
            ResponseChecksumValidation::WhenSupported,
        ),
    };
    let mut builder = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .credentials_provider(credentials)
        .force_path_style(settings.force_path_style)
        .request_checksum_calculation(request)
        .response_checksum_validation(response);
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    Client::from_conf(builder.build())
}

/// A bucket that could not be checked or created.
#[derive(Debug, thiserror::Error)]
#[error("cannot use S3 bucket `{bucket}`: {message}")]
pub struct BucketError {
    bucket: String,
    message: String,
}

/// Creates `bucket` unless it exists.
pub async fn ensure_bucket(client: &Client, bucket: &str) -> Result<(), BucketError> {
    let fail = |message: String| BucketError {
        bucket: bucket.to_owned(),
        message,
    };
    match client.head_bucket().bucket(bucket).send().await {
        Ok(_) => return Ok(()),
        Err(error) => {
            let not_found = error
                .raw_response()
                .is_some_and(|r| r.status().as_u16() == 404);
            if !not_found {
                return Err(fail(DisplayErrorContext(&error).to_string()));
            }
        }
    }
    match client.create_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(error)
            if matches!(
                error.code(),
                Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
            ) =>
        {
            Ok(())
        }
        Err(error) => Err(fail(DisplayErrorContext(&error).to_string())),
    }
}

/// Uploads a small object in one request.
pub async fn put(client: &Client, bucket: &str, key: &str, body: Bytes) -> anyhow::Result<()> {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_length(body.len() as i64)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot write {key}: {}", DisplayErrorContext(e)))?;
    Ok(())
}

/// Reads a small object whole.
pub async fn get_small(client: &Client, bucket: &str, key: &str) -> anyhow::Result<Bytes> {
    let object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {key}: {}", DisplayErrorContext(e)))?;
    Ok(object
        .body
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {key}: {e}"))?
        .into_bytes())
}

/// Every key under `prefix`, page by page.
pub async fn list_keys_under(
    client: &Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<String>, SdkError<ListObjectsV2Error>> {
    Ok(list_objects_under(client, bucket, prefix)
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect())
}

/// An object found by [`list_objects_under`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag, as the server gave it.
    pub e_tag: Option<String>,
}

/// Every object under `prefix` with its size, sorted by key.
pub async fn list_objects_under(
    client: &Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<ObjectInfo>, SdkError<ListObjectsV2Error>> {
    let mut objects = list_under(client, bucket, prefix, |o| {
        Some(ObjectInfo {
            key: o.key()?.to_owned(),
            size: object_size(o),
            e_tag: o.e_tag().map(str::to_owned),
        })
    })
    .await?;
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(objects)
}

/// An object found by [`list_objects_modified_under`]: its key, size and creation time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was written (S3's `LastModified`: objects are never modified, only replaced).
    pub last_modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// Every object under `prefix` with its size and `LastModified`, sorted by key.
pub async fn list_objects_modified_under(
    client: &Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<StoredObject>, SdkError<ListObjectsV2Error>> {
    let mut objects = list_under(client, bucket, prefix, |o| {
        Some(StoredObject {
            key: o.key()?.to_owned(),
            size: object_size(o),
            last_modified: o
                .last_modified()
                .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
        })
    })
    .await?;
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(objects)
}

/// An object's size in bytes; 0 where the server gave none (or a negative one).
fn object_size(object: &aws_sdk_s3::types::Object) -> u64 {
    object
        .size()
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(0)
}

/// The listing behind the others: every object under `prefix`, page by page, turned into a
/// `T` by `entry` (an object it returns `None` for is skipped). In no set order.
///
/// One flat listing, no delimiter: a server that keeps an emptied "folder" for a while (as
/// SeaweedFS does) shows it as an object only to a delimited listing of that folder.
async fn list_under<T>(
    client: &Client,
    bucket: &str,
    prefix: &str,
    entry: impl Fn(&aws_sdk_s3::types::Object) -> Option<T>,
) -> Result<Vec<T>, SdkError<ListObjectsV2Error>> {
    let mut objects = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        objects.extend(page?.contents().iter().filter_map(&entry));
    }
    Ok(objects)
}

/// Deletes `keys`, 1,000 per request. A key already gone counts as deleted (S3 does not tell
/// the difference), so a repeated deletion succeeds.
pub async fn delete_keys(
    client: &Client,
    bucket: &str,
    keys: &[String],
) -> Result<(), TransferError> {
    let versions: Vec<ObjectVersion> = keys
        .iter()
        .map(|key| ObjectVersion {
            key: key.clone(),
            version_id: None,
        })
        .collect();
    delete_versions(client, bucket, &versions).await
}

/// One version of an object (or a delete marker) of a versioned bucket; without a version id,
/// the object's current version (on a versioned bucket, deleting it only adds a delete
/// marker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    /// The object's key.
    pub key: String,
    /// The version, as the server names it.
    pub version_id: Option<String>,
}

/// Deletes `versions` (objects, or given a version id, that very version or delete marker, for
/// good), 1,000 per request: the workspace's one batch delete. A version already gone counts
/// as deleted.
pub async fn delete_versions(
    client: &Client,
    bucket: &str,
    versions: &[ObjectVersion],
) -> Result<(), TransferError> {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    for batch in versions.chunks(1000) {
        let objects = batch
            .iter()
            .map(|v| {
                ObjectIdentifier::builder()
                    .key(&v.key)
                    .set_version_id(v.version_id.clone())
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| TransferError::other("deleting objects", "invalid key", false))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|_| TransferError::other("deleting objects", "invalid request", false))?;
        let out = client
            .delete_objects()
            .bucket(bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| TransferError::from_sdk("deleting objects", &e))?;
        if let Some(first) = out.errors().first() {
            return Err(TransferError::other(
                "deleting objects",
                format!(
                    "{} of {} objects not deleted ({})",
                    out.errors().len(),
                    batch.len(),
                    first.code().unwrap_or("unknown error")
                ),
                true,
            ));
        }
    }
    Ok(())
}

/// Whether `bucket` keeps versions: versioning enabled, or suspended after having been
/// enabled (old versions then remain). A server that does not implement versioning at all
/// (`NotImplemented`) keeps none.
pub async fn bucket_keeps_versions(
    client: &Client,
    bucket: &str,
) -> Result<bool, SdkError<aws_sdk_s3::operation::get_bucket_versioning::GetBucketVersioningError>>
{
    match client.get_bucket_versioning().bucket(bucket).send().await {
        Ok(out) => Ok(out.status().is_some()),
        Err(error) if error.code() == Some("NotImplemented") => Ok(false),
        Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 501 => Ok(false),
        Err(error) => Err(error),
    }
}

/// Every version and delete marker under `prefix` (the whole prefix, any depth), page by page.
pub async fn list_versions_under(
    client: &Client,
    bucket: &str,
    prefix: &str,
) -> Result<
    Vec<ObjectVersion>,
    SdkError<aws_sdk_s3::operation::list_object_versions::ListObjectVersionsError>,
> {
    let mut found = Vec::new();
    let mut key_marker: Option<String> = None;
    let mut version_marker: Option<String> = None;
    loop {
        let page = client
            .list_object_versions()
            .bucket(bucket)
            .prefix(prefix)
            .set_key_marker(key_marker.take())
            .set_version_id_marker(version_marker.take())
            .send()
            .await?;
        found.extend(page.versions().iter().filter_map(|v| {
            Some(ObjectVersion {
                key: v.key()?.to_owned(),
                version_id: v.version_id().map(str::to_owned),
            })
        }));
        found.extend(page.delete_markers().iter().filter_map(|m| {
            Some(ObjectVersion {
                key: m.key()?.to_owned(),
                version_id: m.version_id().map(str::to_owned),
            })
        }));
        if page.is_truncated() != Some(true) {
            break;
        }
        key_marker = page.next_key_marker().map(str::to_owned);
        version_marker = page.next_version_id_marker().map(str::to_owned);
        if key_marker.is_none() && version_marker.is_none() {
            break;
        }
    }
    Ok(found)
}

/// A multipart upload that was started and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// The key it writes.
    pub key: String,
    /// Its id.
    pub upload_id: String,
    /// When it was started.
    pub initiated: Option<chrono::DateTime<chrono::Utc>>,
}

/// Every unfinished multipart upload under `prefix`, page by page.
pub async fn list_pending_uploads(
    client: &Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<PendingUpload>, TransferError> {
    let mut uploads = Vec::new();
    let mut key_marker: Option<String> = None;
    let mut id_marker: Option<String> = None;
    loop {
        let page = client
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(prefix)
            .set_key_marker(key_marker.clone())
            .set_upload_id_marker(id_marker.clone())
            .send()
            .await;
        let page =
            page.map_err(|error| TransferError::from_sdk("listing unfinished uploads", &error))?;
        uploads.extend(page.uploads().iter().filter_map(|u| {
            Some(PendingUpload {
                key: u.key()?.to_owned(),
                upload_id: u.upload_id()?.to_owned(),
                initiated: u
                    .initiated()
                    .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
            })
        }));
        if page.is_truncated() != Some(true) {
            break;
        }
        key_marker = page.next_key_marker().map(str::to_owned);
        id_marker = page.next_upload_id_marker().map(str::to_owned);
        if key_marker.is_none() && id_marker.is_none() {
            break;
        }
    }
    Ok(uploads)
}

/// A failed S3 operation, described by what was being done and the S3 error code or the kind
/// of failure only: keys and the servers' messages can name a data subject.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{action} failed: {detail}")]
pub struct TransferError {
    /// What was being done (`uploading a part`, ...).
    pub action: &'static str,
    /// The S3 error code or the kind of failure.
    pub detail: String,
    /// Whether trying again later may succeed.
    pub retryable: bool,
    /// The S3 error code, if the server answered with one.
    pub code: Option<String>,
}

impl TransferError {
    /// Classifies an SDK error.
    pub fn from_sdk<E: ProvideErrorMetadata, R>(
        action: &'static str,
        error: &SdkError<E, R>,
    ) -> Self {
        let (detail, retryable, code) = match error {
            SdkError::TimeoutError(_) => ("timed out".to_owned(), true, None),
            SdkError::DispatchFailure(_) => ("cannot reach the S3 endpoint".to_owned(), true, None),
            SdkError::ResponseError(_) => ("unreadable response".to_owned(), true, None),
            SdkError::ConstructionFailure(_) => {
                ("the request could not be built".to_owned(), false, None)
            }
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or("unknown").to_owned();
                let retryable = matches!(
                    code.as_str(),
                    "SlowDown"
                        | "InternalError"
                        | "ServiceUnavailable"
                        | "RequestTimeout"
                        | "RequestTimeTooSkewed"
                        | "unknown"
                );
                (format!("S3 error {code}"), retryable, Some(code))
            }
            _ => ("S3 client error".to_owned(), true, None),
        };
        Self {
            action,
            detail,
            retryable,
            code,
        }
    }

    /// A failure outside the SDK (a body that broke off, a task that died).
    pub fn other(action: &'static str, detail: impl Into<String>, retryable: bool) -> Self {
        Self {
            action,
            detail: detail.into(),
            retryable,
            code: None,
        }
    }

    /// Whether the server said the object or upload does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.code.as_deref(),
            Some("NoSuchKey" | "NotFound" | "NoSuchUpload")
        )
    }
}

/// S3's largest part.
pub const MAX_PART: u64 = 5 << 30;
/// S3's smallest part (except the last).
pub const MIN_PART: u64 = 5 << 20;
/// S3's most parts in one upload.
pub const MAX_PARTS: u32 = 10_000;
/// Parts of one size before the size doubles.
const PARTS_PER_STEP: u32 = 900;

/// The size of part `number` (1-based) of an object whose first parts have `base` bytes.
///
/// A stream's length is unknown in advance, so part sizes grow: the first 900 parts have the
/// base size, each following 900 twice the size of the previous 900 (capped at 5 GiB).
/// Whatever the base (at least 5 MiB), 10,000 parts then hold more than S3's 5 TiB object
/// limit, while an object of a few GiB never holds more than a few parts of the base size in
/// memory.
pub fn part_size(base: u64, number: u32) -> u64 {
    let step = number.saturating_sub(1) / PARTS_PER_STEP;
    base.max(MIN_PART)
        .checked_shl(step)
        .unwrap_or(MAX_PART)
        .min(MAX_PART)
}

/// How an [`ObjectWriter`] cuts and sends its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterOptions {
    /// Bytes of the first parts (at least 5 MiB); later parts grow, see [`part_size`].
    pub part_size: usize,
    /// Parts uploading at once while writing goes on. Memory is bounded by
    /// `part_size * (parallel_parts + 1)` for objects of up to 900 parts.
    pub parallel_parts: usize,
    /// Whether each part carries its SigV4 payload hash. An object whose SHA-256 is recorded
    /// and checked end to end (a backup) skips it: hashing every part again only to sign it
    /// costs a second pass over the bytes here and another in the server.
    pub sign_payload: bool,
}

impl WriterOptions {
    /// 8 MiB parts, two in flight, signed: about 24 MiB of buffers.
    pub const DEFAULT: Self = Self {
        part_size: 8 * 1024 * 1024,
        parallel_parts: 2,
        sign_payload: true,
    };
}

/// What [`ObjectWriter::finish`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uploaded {
    /// The object's size in bytes.
    pub bytes: u64,
    /// Parts of its multipart upload (0 for an object sent with one `PutObject`).
    pub parts: u32,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

type PartUpload = JoinHandle<Result<CompletedPart, TransferError>>;

/// Writes one object as a stream: bytes are buffered up to a part and uploaded as parts of a
/// multipart upload while writing goes on, so memory stays bounded whatever the object's size.
/// An object that ends before its first part is full is sent with one `PutObject`.
///
/// [`ObjectWriter::finish`] completes the object; [`ObjectWriter::abort`] (or an error of
/// `finish`) abandons it. A writer dropped without either stops its part uploads and leaves
/// the multipart upload for the caller to abort later (its id is [`ObjectWriter::upload_id`]).
pub struct ObjectWriter {
    client: Client,
    bucket: String,
    key: String,
    content_type: Option<String>,
    options: WriterOptions,
    buffer: BytesMut,
    upload_id: Option<String>,
    next_part: i32,
    in_flight: VecDeque<PartUpload>,
    completed: Vec<CompletedPart>,
    written: u64,
}

impl ObjectWriter {
    /// A writer of `bucket/key`. Nothing is sent before the first part is full (or
    /// [`ObjectWriter::start`]).
    pub fn new(client: Client, bucket: &str, key: &str, options: WriterOptions) -> Self {
        let options = WriterOptions {
            parallel_parts: options.parallel_parts.max(1),
            ..options
        };
        Self {
            client,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            content_type: None,
            options,
            buffer: BytesMut::new(),
            upload_id: None,
            next_part: 1,
            in_flight: VecDeque::new(),
            completed: Vec::new(),
            written: 0,
        }
    }

    /// Sets the object's `Content-Type`.
    pub fn content_type(mut self, content_type: &str) -> Self {
        self.content_type = Some(content_type.to_owned());
        self
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The multipart upload's id, once started.
    pub fn upload_id(&self) -> Option<&str> {
        self.upload_id.as_deref()
    }

    /// Starts the multipart upload now (rather than when the first part is full) and returns
    /// its id, so the caller can record it and abort it should the process die.
    pub async fn start(&mut self) -> Result<String, TransferError> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .set_content_type(self.content_type.clone())
            .send()
            .await
            .map_err(|e| TransferError::from_sdk("starting a multipart upload", &e))?;
        let id = created
            .upload_id()
            .ok_or_else(|| {
                TransferError::other(
                    "starting a multipart upload",
                    "the server returned no upload id",
                    true,
                )
            })?
            .to_owned();
        self.upload_id = Some(id.clone());
        Ok(id)
    }

    fn part_size(&self) -> usize {
        let number = u32::try_from(self.next_part).unwrap_or(u32::MAX);
        usize::try_from(part_size(self.options.part_size as u64, number)).unwrap_or(usize::MAX)
    }

    /// Appends `data`, uploading every part that fills up; waits when enough parts are in
    /// flight already.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), TransferError> {
        self.written += data.len() as u64;
        while !data.is_empty() {
            let size = self.part_size();
            if self.buffer.capacity() < size {
                self.buffer.reserve(size - self.buffer.len());
            }
            let room = size - self.buffer.len();
            let take = room.min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buffer.len() >= size {
                let part = self.buffer.split().freeze();
                self.send_part(part).await?;
            }
        }
        Ok(())
    }

    async fn send_part(&mut self, part: Bytes) -> Result<(), TransferError> {
        let upload_id = self.start().await?;
        if u32::try_from(self.next_part).unwrap_or(u32::MAX) > MAX_PARTS {
            return Err(TransferError::other(
                "uploading a part",
                format!("the object needs more than S3's {MAX_PARTS} parts"),
                false,
            ));
        }
        while self.in_flight.len() >= self.options.parallel_parts {
            self.wait_oldest().await?;
        }
        let number = self.next_part;
        self.next_part += 1;
        let client = self.client.clone();
        let bucket = self.bucket.clone();
        let key = self.key.clone();
        let sign_payload = self.options.sign_payload;
        self.in_flight.push_back(tokio::spawn(async move {
            let length = part.len() as i64;
            let request = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(length)
                .body(ByteStream::from(part));
            let sent = if sign_payload {
                request.send().await
            } else {
                request.customize().disable_payload_signing().send().await
            };
            let uploaded = sent.map_err(|e| TransferError::from_sdk("uploading a part", &e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(uploaded.e_tag().map(str::to_owned))
                .build())
        }));
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<(), TransferError> {
        let Some(handle) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let part = handle.await.map_err(|_| {
            TransferError::other("uploading a part", "the upload task ended abnormally", true)
        })??;
        self.completed.push(part);
        Ok(())
    }

    /// Sends what is left and completes the object. On failure the upload is aborted.
    pub async fn finish(mut self) -> Result<Uploaded, TransferError> {
        match self.complete().await {
            Ok(()) => Ok(Uploaded {
                bytes: self.written,
                parts: u32::try_from(self.next_part - 1).unwrap_or(u32::MAX),
            }),
            Err(error) => {
                self.abort_upload().await;
                Err(error)
            }
        }
    }

    async fn complete(&mut self) -> Result<(), TransferError> {
        if self.upload_id.is_none() {
            let body = self.buffer.split().freeze();
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .set_content_type(self.content_type.clone())
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| TransferError::from_sdk("writing an object", &e))?;
            return Ok(());
        }
        if !self.buffer.is_empty() || self.next_part == 1 {
            let part = self.buffer.split().freeze();
            self.send_part(part).await?;
        }
        while !self.in_flight.is_empty() {
            self.wait_oldest().await?;
        }
        let parts = std::mem::take(&mut self.completed);
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(self.upload_id.clone().unwrap_or_default())
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| TransferError::from_sdk("completing a multipart upload", &e))?;
        self.upload_id = None;
        Ok(())
    }

    /// Abandons the object: stops the part uploads and aborts the multipart upload.
    pub async fn abort(mut self) {
        self.abort_upload().await;
    }

    async fn abort_upload(&mut self) {
        for handle in self.in_flight.drain(..) {
            handle.abort();
        }
        if let Some(id) = self.upload_id.take() {
            abort_upload(&self.client, &self.bucket, &self.key, &id).await;
        }
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        for handle in &self.in_flight {
            handle.abort();
        }
    }
}

/// Aborts a multipart upload, quietly: an upload already gone is what was wanted, and an
/// abort that fails leaves parts for the bucket's lifecycle rules (logged, without the key).
pub async fn abort_upload(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    let aborted = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await;
    if let Err(error) = aborted {
        let error = TransferError::from_sdk("aborting a multipart upload", &error);
        if !error.is_not_found() {
            tracing::warn!(error = %error, "cannot abort a multipart upload");
        }
    }
}

/// The largest object one `CopyObject` copies; larger ones are copied part by part.
const MAX_SINGLE_COPY: u64 = 5 * 1024 * 1024 * 1024;
/// Bytes per part of a multipart copy.
const COPY_PART_SIZE: u64 = 512 * 1024 * 1024;

/// The object a server-side copy reads.
#[derive(Debug, Clone, Copy)]
pub struct CopySource<'a> {
    /// Its bucket.
    pub bucket: &'a str,
    /// Its key.
    pub key: &'a str,
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag as listed: the copy fails (`PreconditionFailed`) if the object changed since,
    /// so the size recorded is the size copied.
    pub e_tag: Option<&'a str>,
}

/// Copies `source` to `bucket/key` inside the S3 service, without the bytes passing through
/// this process: one `CopyObject` up to 5 GiB, a multipart copy (`UploadPartCopy`) above.
pub async fn copy_object(
    client: &Client,
    source: CopySource<'_>,
    bucket: &str,
    key: &str,
) -> Result<(), TransferError> {
    let size = source.size;
    let if_match = source.e_tag.map(str::to_owned);
    let source = format!("{}/{}", source.bucket, percent_encode_key(source.key));
    if size <= MAX_SINGLE_COPY {
        client
            .copy_object()
            .bucket(bucket)
            .key(key)
            .copy_source(source)
            .set_copy_source_if_match(if_match)
            .send()
            .await
            .map_err(|e| TransferError::from_sdk("copying an object", &e))?;
        return Ok(());
    }
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| TransferError::from_sdk("starting a multipart copy", &e))?;
    let Some(upload_id) = created.upload_id().map(str::to_owned) else {
        return Err(TransferError::other(
            "starting a multipart copy",
            "the server returned no upload id",
            true,
        ));
    };
    let copied = async {
        let mut parts = Vec::new();
        let mut start = 0u64;
        let mut number = 1;
        while start < size {
            let end = (start + COPY_PART_SIZE).min(size) - 1;
            let part = client
                .upload_part_copy()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(number)
                .copy_source(&source)
                .set_copy_source_if_match(if_match.clone())
                .copy_source_range(format!("bytes={start}-{end}"))
                .send()
                .await
                .map_err(|e| TransferError::from_sdk("copying a part", &e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(
                        part.copy_part_result()
                            .and_then(|r| r.e_tag())
                            .map(str::to_owned),
                    )
                    .build(),
            );
            start = end + 1;
            number += 1;
        }
        client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| TransferError::from_sdk("completing a multipart copy", &e))?;
        Ok(())
    }
    .await;
    if copied.is_err() {
        abort_upload(client, bucket, key, &upload_id).await;
    }
    copied
}

/// A key as `x-amz-copy-source` wants it: percent-encoded, `/` kept.
fn percent_encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A download link for `bucket/key` valid for `expires_in` (at most 7 days, SigV4's limit),
/// signed with `client`'s credentials. `file_name` becomes the download's suggested name.
pub async fn presign_get(
    client: &Client,
    bucket: &str,
    key: &str,
    expires_in: Duration,
    file_name: Option<&str>,
) -> Result<String, TransferError> {
    let expires_in = expires_in.clamp(Duration::from_secs(1), Duration::from_secs(7 * 24 * 3600));
    let config = PresigningConfig::expires_in(expires_in)
        .map_err(|_| TransferError::other("presigning a download", "invalid expiry", false))?;
    let request = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_response_content_disposition(
            file_name.map(|name| format!("attachment; filename=\"{name}\"")),
        )
        .presigned(config)
        .await
        .map_err(|e| TransferError::from_sdk("presigning a download", &e))?;
    Ok(request.uri().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_sources_are_percent_encoded_but_for_slashes() {
        assert_eq!(
            percent_encode_key("a b/c+d/é.png"),
            "a%20b/c%2Bd/%C3%A9.png"
        );
        assert_eq!(percent_encode_key("avatars/7/x-y_z.~"), "avatars/7/x-y_z.~");
    }

    #[test]
    fn part_sizes_start_at_the_configured_size_and_double_every_900_parts() {
        let base = 8 << 20;
        assert_eq!(part_size(base, 1), base);
        assert_eq!(part_size(base, 900), base);
        assert_eq!(part_size(base, 901), 2 * base);
        assert_eq!(part_size(base, 1_801), 4 * base);
        assert_eq!(part_size(1, 1), MIN_PART, "never below S3's minimum");
    }

    #[test]
    fn ten_thousand_parts_hold_more_than_the_largest_s3_object_and_no_part_is_too_big() {
        for base in [MIN_PART, 8 << 20, 64 << 20, 1 << 30] {
            let mut total = 0u64;
            for number in 1..=MAX_PARTS {
                let size = part_size(base, number);
                assert!(size <= MAX_PART, "part {number} of base {base}: {size}");
                total += size;
            }
            assert!(total >= 5 << 40, "base {base}: only {total} bytes");
        }
    }
}
