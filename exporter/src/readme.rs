//! `README.txt`: what the archive holds, in plain language, for the person it is about.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use lethe_common::datamap::{EraseStrategy, Store};
use lethe_common::ids::RequestId;

use crate::staging::Fragment;

/// One store as the README describes it.
pub(crate) struct StoreText<'a> {
    /// Its fragment.
    pub fragment: &'a Fragment,
    /// Its data-map entry, if this exporter's data map still has it.
    pub store: Option<&'a Store>,
}

fn kind_text(kind: &str) -> &'static str {
    match kind {
        "postgres" => "a PostgreSQL database",
        "mysql" => "a MySQL/MariaDB database",
        "redis" => "a Redis key-value store",
        "s3" => "a file storage bucket",
        "http" => "a service we pass your data to, asked through its API",
        _ => "a data store",
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// The README of an archive.
pub(crate) fn render(
    request: RequestId,
    generated_at: DateTime<Utc>,
    stores: &[StoreText<'_>],
) -> String {
    let mut text = String::with_capacity(4096);
    let _ = write!(
        text,
        "YOUR PERSONAL DATA\n\
         ==================\n\
         \n\
         This archive answers the data-subject request {request} (GDPR Art. 15 and 20).\n\
         It was put together on {} UTC from every data store where we keep personal data,\n\
         and holds everything found about you there at that time, including records we keep\n\
         after an erasure because the law requires it.\n\
         \n\
         WHAT IS WHERE\n\
         -------------\n\
         \n\
         There is one folder per data store. In each folder, every collection (a database\n\
         table, a family of keys) is given twice, with the same content:\n\
         \n\
         \x20 <collection>.json  the records as a JSON array: one object per record, with every\n\
         \x20                    field exactly as the store holds it.\n\
         \x20 <collection>.csv   the same records as a table for spreadsheets: one row per record,\n\
         \x20                    one column per field.\n\
         \n\
         Files (pictures, attachments) are in the store's files/ folder, byte for byte as\n\
         stored, under the name they have in the store.\n\
         \n\
         manifest.json lists every file of this archive with its size and SHA-256 checksum, and\n\
         the number of records of each collection. To check a file, compare the output of\n\
         `sha256sum <file>` with its entry.\n\
         \n",
        generated_at.format("%Y-%m-%d %H:%M:%S")
    );
    let nothing = stores.iter().all(|s| {
        s.fragment.collections.iter().all(|c| c.records == 0) && s.fragment.files.is_empty()
    });
    if nothing {
        // Said plainly: an empty archive must not read as a failed one.
        text.push_str(
            "WE HOLD NO DATA ABOUT YOU\n\
             -------------------------\n\
             \n\
             We searched every data store below with the identifiers you gave us, and with every\n\
             identifier linked to them, and found no record about you. The folders below are\n\
             empty for that reason.\n\
             \n",
        );
    }
    for store in stores {
        let fragment = store.fragment;
        let _ = writeln!(text, "{}/  ({})", fragment.store, kind_text(&fragment.kind));
        for collection in &fragment.collections {
            let data_map = match store.store {
                Some(Store::Postgres(sql) | Store::Mysql(sql)) => {
                    sql.collections.iter().find(|c| c.table == collection.name)
                }
                _ => None,
            };
            match &collection.stem {
                Some(stem) => {
                    let what = match fragment.kind.as_str() {
                        "redis" => format!("keys named `{}`", collection.name),
                        "http" => format!("the service's `{}`", collection.name),
                        _ => format!("table `{}`", collection.name),
                    };
                    let _ = writeln!(
                        text,
                        "  {stem}.json, {stem}.csv: {} from {what}.",
                        plural(collection.records, "record", "records")
                    );
                }
                None => {
                    let _ = writeln!(
                        text,
                        "  files/: {} stored under `{}`.",
                        plural(collection.records, "file", "files"),
                        collection.name
                    );
                }
            }
            match fragment.kind.as_str() {
                "redis" => {
                    let _ = writeln!(text, "      On an erasure request these keys are deleted.");
                }
                "s3" => {
                    let _ = writeln!(text, "      On an erasure request these files are deleted.");
                }
                "http" => {
                    // Only the lookup's records are erased; the others the service keeps under
                    // its own obligations (a payment processor's charges, say).
                    let erased = matches!(store.store, Some(Store::Http(http)) if http.resolve.name == collection.name);
                    let _ = writeln!(
                        text,
                        "      {}",
                        if erased {
                            "On an erasure request we ask the service to delete these records."
                        } else {
                            "The service keeps these records under its own obligations."
                        }
                    );
                }
                _ => {}
            }
            if let Some(c) = data_map {
                let handling = match &c.erase {
                    EraseStrategy::Delete => {
                        "On an erasure request these records are deleted.".to_owned()
                    }
                    EraseStrategy::Retain => {
                        "These records are kept after an erasure request.".to_owned()
                    }
                    EraseStrategy::Mask(columns) => format!(
                        "On an erasure request these records are kept with {} overwritten ({}).",
                        if columns.len() == 1 {
                            "one field"
                        } else {
                            "some fields"
                        },
                        columns.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                };
                let _ = writeln!(text, "      {handling}");
                if let Some(basis) = &c.retain {
                    let _ = writeln!(text, "      Why we keep them: {basis}");
                }
                if let Some(log) = &c.log {
                    let _ = writeln!(
                        text,
                        "      A log: entries are deleted after {} days.",
                        log.max_age_days
                    );
                }
            }
        }
        let _ = writeln!(text);
    }
    text.push_str(
        "READING THE CSV FILES\n\
         ---------------------\n\
         \n\
         The CSV files are UTF-8 text, one record per line, fields separated by commas\n\
         (RFC 4180). The first line names the columns. A field holding a comma, a double quote\n\
         or a line break is enclosed in double quotes, and a double quote inside it is doubled.\n\
         An empty field means the record has no value there. Lists and nested records are\n\
         written as JSON text. Spreadsheet programs may take a field beginning with =, +, - or @\n\
         for a formula: import the files as text to see them as they are.\n\
         \n\
         The JSON files hold the same data with its types (numbers, true/false, null) and\n\
         nesting, and are the better source for moving your data to another service.\n",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::staging::StagedCollection;
    use lethe_common::ids::StoreName;

    fn fragment(records: u64) -> Fragment {
        Fragment {
            version: 1,
            request_id: RequestId::new(),
            store: StoreName::parse("accounts").unwrap(),
            kind: "postgres".to_owned(),
            collected_at: Utc::now(),
            collections: vec![StagedCollection {
                name: "users".to_owned(),
                stem: Some("users".to_owned()),
                object: None,
                records,
                bytes: 0,
            }],
            files: Vec::new(),
        }
    }

    #[test]
    fn an_archive_with_no_record_says_we_hold_no_data_about_the_subject() {
        let empty = fragment(0);
        let text = render(
            RequestId::new(),
            Utc::now(),
            &[StoreText {
                fragment: &empty,
                store: None,
            }],
        );
        assert!(text.contains("WE HOLD NO DATA ABOUT YOU"), "{text}");
        let full = fragment(1);
        let text = render(
            RequestId::new(),
            Utc::now(),
            &[StoreText {
                fragment: &full,
                store: None,
            }],
        );
        assert!(!text.contains("WE HOLD NO DATA"), "{text}");
    }
}
