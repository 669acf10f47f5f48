//! Versioned buckets: an erasure deletes every version and delete marker under the subject's
//! prefixes, not just the current objects.

use anyhow::Result;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
use lethe_common::messages::TaskKind;
use lethe_tests::Services;
use lethe_tests::eraser_support::{EraserBed, identity, task};

use crate::eraser::{done, run_tasks};

/// A user id the sample does not seed, so the subject's prefix holds only what the test puts.
const USER_ID: &str = "424242";

#[tokio::test]
async fn an_erasure_in_a_versioned_bucket_leaves_no_version_and_no_delete_marker() -> Result<()> {
    // Arrange: versioning on the files bucket; three versions of the subject's avatar, then a
    // delete marker over them (what an application's own "delete" leaves behind).
    let bed = EraserBed::create(&Services::from_env()).await?;
    let files = &bed.stores.files;
    let enabled = files
        .client
        .put_bucket_versioning()
        .bucket(&files.bucket)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await;
    // The local S3 server (SeaweedFS) keeps versions: a server that does not would make this
    // test check nothing, so it fails instead.
    anyhow::ensure!(
        enabled.is_ok()
            && lethe_common::s3::bucket_keeps_versions(&files.client, &files.bucket).await?,
        "the S3 server at hand does not keep versions: run the suite against SeaweedFS (scripts/test)"
    );
    let prefix = format!("avatars/{USER_ID}/");
    let key = format!("{prefix}avatar.png");
    for version in 1..=3 {
        files
            .client
            .put_object()
            .bucket(&files.bucket)
            .key(&key)
            .body(ByteStream::from(format!("version {version}").into_bytes()))
            .send()
            .await?;
    }
    files
        .client
        .delete_object()
        .bucket(&files.bucket)
        .key(&key)
        .send()
        .await?;
    let before = lethe_common::s3::list_versions_under(&files.client, &files.bucket, &prefix)
        .await?
        .len();

    // Act
    let results = run_tasks(
        &bed,
        &[task(
            TaskKind::Erase,
            "files",
            identity("user_id", USER_ID),
        )?],
    )
    .await?;

    // Assert
    assert_eq!(before, 4, "three versions and a delete marker");
    let report = done(&results[0])?;
    assert_eq!(report.remaining, Some(0));
    assert_eq!(report.counts["avatars/{user_id}/"], 4);
    let left = files
        .client
        .list_object_versions()
        .bucket(&files.bucket)
        .prefix(&prefix)
        .send()
        .await?;
    assert!(left.versions().is_empty(), "{:?}", left.versions());
    assert!(
        left.delete_markers().is_empty(),
        "{:?}",
        left.delete_markers()
    );
    bed.cleanup().await
}
