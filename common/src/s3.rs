//! An S3 client for AWS or any S3-compatible server, built from [`S3Settings`] alone (no
//! ambient AWS configuration is read, so what runs is what the file says).

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use secrecy::ExposeSecret;

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

/// Every key under `prefix`, walking the tree one level at a time (`delimiter = "/"`), page by
/// page. Walking by level costs a request per folder but lets servers answer from the folder
/// alone; some S3-compatible servers (s3s-fs among them) scan the whole bucket for a
/// prefix-only listing.
pub async fn list_keys_under(
    client: &Client,
    bucket: &str,
    prefix: &str,
) -> Result<
    Vec<String>,
    aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error>,
> {
    let mut keys = Vec::new();
    let mut folders = vec![prefix.to_owned()];
    while let Some(folder) = folders.pop() {
        let mut pages = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(&folder)
            .delimiter("/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            folders.extend(
                page.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix().map(str::to_owned)),
            );
        }
    }
    keys.sort();
    Ok(keys)
}
