//! The staging area of an export in Lethe's bucket, and the fragment each collect task leaves
//! there for the assembler:
//!
//! ```text
//! staging/<request>/<store>/<collection>.ndjson    one JSON object per line, one line per record
//! staging/<request>/<store>/files/<key>            copies of the subject's objects
//! staging/<request>/<store>/manifest.json          the fragment: written last, so its presence
//!                                                  means the store's collect finished
//! staging/<request>/upload.json                    the archive's multipart upload in progress
//! exports/<request>/<request>.zip                  the archive
//! ```
//!
//! Every name inside the archive is decided here, at collect time, so the assembler only
//! follows the fragments.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use lethe_common::ids::{RequestId, StoreName};
use serde::{Deserialize, Serialize};

/// The prefix of everything staged for `request`.
pub fn request_prefix(request: RequestId) -> String {
    format!("staging/{request}/")
}

/// The prefix of one store's fragment.
pub fn store_prefix(request: RequestId, store: &StoreName) -> String {
    format!("staging/{request}/{store}/")
}

/// The key of one store's fragment manifest.
pub fn manifest_key(request: RequestId, store: &StoreName) -> String {
    format!("{}manifest.json", store_prefix(request, store))
}

/// The key recording the archive's multipart upload while it runs.
pub fn upload_key(request: RequestId) -> String {
    format!("{}upload.json", request_prefix(request))
}

/// The key of the archive.
pub fn archive_key(request: RequestId) -> String {
    format!("exports/{request}/{request}.zip")
}

/// The fragment of one store, as its collect task wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fragment {
    /// Format version.
    pub version: u32,
    /// The request.
    pub request_id: RequestId,
    /// The store.
    pub store: StoreName,
    /// `postgres`, `mysql`, `redis` or `s3`.
    pub kind: String,
    /// When the collect task finished.
    pub collected_at: DateTime<Utc>,
    /// Every collection of the store's data-map entry, in data-map order.
    pub collections: Vec<StagedCollection>,
    /// The copied objects (object stores).
    #[serde(default)]
    pub files: Vec<StagedFile>,
}

/// One collection of a fragment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedCollection {
    /// The data map's name for it: table, key template or prefix template.
    pub name: String,
    /// The file name stem inside the store's folder of the archive (`<stem>.json`,
    /// `<stem>.csv`); absent for an object store's prefixes, whose objects are files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stem: Option<String>,
    /// The staged NDJSON object, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Records (rows, keys) or objects found.
    pub records: u64,
    /// Bytes staged.
    pub bytes: u64,
}

/// One copied object of a fragment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedFile {
    /// The collection (prefix template) it was found under.
    pub collection: String,
    /// Its path inside the store's folder of the archive (`files/...`).
    pub path: String,
    /// The staged copy.
    pub object: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Names inside one store's folder, each given once.
#[derive(Debug, Default)]
pub struct Names {
    taken: BTreeSet<String>,
}

impl Names {
    /// A file name stem for collection `name`: a table name stays as it is (`users`,
    /// `billing.invoices`); a key template loses its placeholders and separators
    /// (`session:{user_id}` -> `session`). A stem already given gets `_2`, `_3`, ...
    pub fn stem(&mut self, name: &str) -> String {
        let mut plain = String::with_capacity(name.len());
        let mut in_placeholder = false;
        let mut gap = false;
        for c in name.chars() {
            match c {
                '{' => in_placeholder = true,
                '}' => {
                    in_placeholder = false;
                    gap = true;
                }
                _ if in_placeholder => {}
                c if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') => {
                    if gap && !plain.is_empty() {
                        plain.push('_');
                    }
                    gap = false;
                    plain.push(c);
                }
                _ => gap = true,
            }
        }
        let plain = plain.trim_matches('.').to_owned();
        let base = if plain.is_empty() {
            "collection".to_owned()
        } else {
            plain
        };
        self.unique(base, "")
    }

    /// The path of an object under `files/`: its key with empty, `.` and `..` segments dropped
    /// and backslashes replaced (an archive must not reach outside its folder when unpacked).
    pub fn file_path(&mut self, key: &str) -> String {
        let segments: Vec<String> = key
            .split('/')
            .filter(|s| !s.is_empty() && *s != "." && *s != "..")
            .map(|s| s.replace('\\', "_"))
            .collect();
        let joined = if segments.is_empty() {
            "object".to_owned()
        } else {
            segments.join("/")
        };
        let path = format!("files/{joined}");
        match path.rsplit_once('.') {
            Some((stem, extension)) if !extension.contains('/') && !stem.ends_with('/') => {
                self.unique(stem.to_owned(), &format!(".{extension}"))
            }
            _ => self.unique(path, ""),
        }
    }

    fn unique(&mut self, base: String, suffix: &str) -> String {
        let mut candidate = format!("{base}{suffix}");
        let mut n = 2;
        while !self.taken.insert(candidate.clone()) {
            candidate = format!("{base}_{n}{suffix}");
            n += 1;
        }
        candidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_are_plain_file_names() {
        let mut names = Names::default();
        assert_eq!(names.stem("users"), "users");
        assert_eq!(names.stem("billing.invoices"), "billing.invoices");
        assert_eq!(names.stem("session:{user_id}"), "session");
        assert_eq!(names.stem("app:{user_id}:prefs"), "app_prefs");
        assert_eq!(names.stem("session:{email}"), "session_2");
        assert_eq!(names.stem("{user_id}"), "collection");
    }

    #[test]
    fn file_paths_stay_inside_the_folder_and_are_unique() {
        let mut names = Names::default();
        assert_eq!(names.file_path("avatars/7/a.png"), "files/avatars/7/a.png");
        assert_eq!(
            names.file_path("avatars//7/./a.png"),
            "files/avatars/7/a_2.png"
        );
        assert_eq!(names.file_path("../../etc/passwd"), "files/etc/passwd");
        assert_eq!(names.file_path("a\\b/c"), "files/a_b/c");
        assert_eq!(names.file_path("dir.v2/readme"), "files/dir.v2/readme");
    }
}
