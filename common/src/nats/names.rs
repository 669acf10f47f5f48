//! Every stream, subject and durable name, derived from one prefix.

use crate::ids::StoreName;
use crate::messages::TaskKind;

/// A prefix that cannot name subjects and streams.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a valid prefix: use 1 to 32 lowercase letters, digits, `_` or `-`, starting with a letter"
)]
pub struct NamesError(String);

/// Names of Lethe's streams, subjects and consumers under one prefix. With prefix `lethe`:
/// streams `LETHE_TASKS`, `LETHE_RESULTS`, `LETHE_EVENTS`, `LETHE_DEAD`; subjects
/// `lethe.erase.<store>`, `lethe.result.<task>.<store>`, `lethe.event.<kind>`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
    stream_prefix: String,
}

/// The durable consumers, one per (daemon kind, store). Every process of that kind for that
/// store binds the same durable, which is how operators scale a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durable {
    /// Resolve, erase, rectify and restrict tasks of one store.
    Eraser(StoreName),
    /// Collect tasks of one store.
    Exporter(StoreName),
    /// Assemble tasks.
    Assembler,
    /// Backup runs.
    Backup,
    /// Retention runs.
    Retention,
    /// Task results, consumed by the coordinator in the api daemon.
    Coordinator,
}

impl Names {
    /// Checks the prefix and derives the names.
    pub fn new(prefix: &str) -> Result<Self, NamesError> {
        let valid = !prefix.is_empty()
            && prefix.len() <= 32
            && prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return Err(NamesError(prefix.to_owned()));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            stream_prefix: prefix.to_ascii_uppercase().replace('-', "_"),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The work-queue stream of tasks.
    pub fn tasks_stream(&self) -> String {
        format!("{}_TASKS", self.stream_prefix)
    }

    /// The work-queue stream of results.
    pub fn results_stream(&self) -> String {
        format!("{}_RESULTS", self.stream_prefix)
    }

    /// The limits stream of events for outside consumers.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.stream_prefix)
    }

    /// The stream where undecodable or unroutable messages are kept for inspection.
    pub fn dead_stream(&self) -> String {
        format!("{}_DEAD", self.stream_prefix)
    }

    /// Subjects captured by the tasks stream.
    pub fn task_subjects(&self) -> Vec<String> {
        let p = &self.prefix;
        vec![
            format!("{p}.resolve.*"),
            format!("{p}.erase.*"),
            format!("{p}.export.*"),
            format!("{p}.rectify.*"),
            format!("{p}.restrict.*"),
            format!("{p}.backup.>"),
            format!("{p}.retention.>"),
        ]
    }

    /// Where a task of `kind` for `store` is published.
    pub fn task_subject(&self, kind: TaskKind, store: Option<&StoreName>) -> String {
        let target = match (kind, store) {
            (TaskKind::Assemble, _) | (_, None) => "assemble",
            (_, Some(store)) => store.as_str(),
        };
        format!("{}.{}.{target}", self.prefix, kind.family())
    }

    /// Where the result of a task is published.
    pub fn result_subject(&self, kind: TaskKind, store: Option<&StoreName>) -> String {
        let store = store.map_or("all", StoreName::as_str);
        format!("{}.result.{}.{store}", self.prefix, kind.as_str())
    }

    /// Every result subject.
    pub fn results_wildcard(&self) -> String {
        format!("{}.result.>", self.prefix)
    }

    /// Where an event of `kind` (dotted, e.g. `request.completed`) is published.
    pub fn event_subject(&self, kind: &str) -> String {
        format!("{}.event.{kind}", self.prefix)
    }

    /// Every event subject.
    pub fn events_wildcard(&self) -> String {
        format!("{}.event.>", self.prefix)
    }

    /// Where a dead-lettered message from `consumer` is kept.
    pub fn dead_subject(&self, consumer: &str) -> String {
        format!("{}.dead.{consumer}", self.prefix)
    }

    /// Every dead-letter subject.
    pub fn dead_wildcard(&self) -> String {
        format!("{}.dead.>", self.prefix)
    }

    /// Asks for a backup run of one store, or of every store when `store` is `None`.
    pub fn backup_run_subject(&self, store: Option<&StoreName>) -> String {
        match store {
            Some(store) => format!("{}.backup.run.{store}", self.prefix),
            None => format!("{}.backup.run", self.prefix),
        }
    }

    /// Asks for a retention run.
    pub fn retention_run_subject(&self) -> String {
        format!("{}.retention.run", self.prefix)
    }

    /// Where the breach register asks a store's exporter to count subjects per tenant: core
    /// NATS request/reply, never stored on a stream (the answer is only useful now).
    pub fn census_subject(&self, store: &StoreName) -> String {
        format!("{}.census.{store}", self.prefix)
    }

    /// The queue group of the exporters answering census requests for `store`, so one of
    /// several exporters of a store answers.
    pub fn census_queue(&self, store: &StoreName) -> String {
        format!("exporter-census-{store}")
    }

    /// Where a daemon asks the api for a fresh audit checkpoint (core NATS request/reply,
    /// outside every stream; the checkpoint itself is published on the events stream).
    pub fn checkpoint_subject(&self) -> String {
        format!("{}.audit.checkpoint", self.prefix)
    }

    /// The queue group of the api processes answering checkpoint requests: one answers.
    pub fn checkpoint_queue(&self) -> String {
        "api-audit-checkpoint".to_owned()
    }

    /// The durable consumer's name.
    pub fn durable_name(&self, durable: &Durable) -> String {
        match durable {
            Durable::Eraser(store) => format!("eraser-{store}"),
            Durable::Exporter(store) => format!("exporter-{store}"),
            Durable::Assembler => "exporter-assemble".to_owned(),
            Durable::Backup => "backup".to_owned(),
            Durable::Retention => "retention".to_owned(),
            Durable::Coordinator => "coordinator".to_owned(),
        }
    }

    /// The subjects the durable consumes.
    pub fn durable_subjects(&self, durable: &Durable) -> Vec<String> {
        let p = &self.prefix;
        match durable {
            Durable::Eraser(store) => ["resolve", "erase", "rectify", "restrict"]
                .iter()
                .map(|family| format!("{p}.{family}.{store}"))
                .collect(),
            Durable::Exporter(store) => vec![format!("{p}.export.{store}")],
            Durable::Assembler => vec![format!("{p}.export.assemble")],
            Durable::Backup => vec![format!("{p}.backup.>")],
            Durable::Retention => vec![format!("{p}.retention.>")],
            Durable::Coordinator => vec![self.results_wildcard()],
        }
    }

    /// The stream the durable reads.
    pub fn durable_stream(&self, durable: &Durable) -> String {
        match durable {
            Durable::Coordinator => self.results_stream(),
            _ => self.tasks_stream(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str) -> StoreName {
        StoreName::parse(name).unwrap()
    }

    #[test]
    fn names_follow_the_prefix() {
        let names = Names::new("t-1a").unwrap();
        assert_eq!(names.tasks_stream(), "T_1A_TASKS");
        assert_eq!(
            names.task_subject(TaskKind::Erase, Some(&store("chat"))),
            "t-1a.erase.chat"
        );
        assert_eq!(
            names.task_subject(TaskKind::Assemble, None),
            "t-1a.export.assemble"
        );
        assert_eq!(
            names.task_subject(TaskKind::LiftObjection, Some(&store("chat"))),
            "t-1a.restrict.chat"
        );
        assert_eq!(
            names.result_subject(TaskKind::Collect, Some(&store("chat"))),
            "t-1a.result.collect.chat"
        );
    }

    #[test]
    fn every_task_subject_is_captured_by_the_tasks_stream_and_one_durable() {
        let names = Names::new("lethe").unwrap();
        let chat = store("chat");
        let durables = [
            Durable::Eraser(chat.clone()),
            Durable::Exporter(chat.clone()),
            Durable::Assembler,
        ];
        for kind in TaskKind::ALL {
            let subject = names.task_subject(kind, Some(&chat));
            let family = subject.split('.').nth(1).unwrap();
            assert!(
                names
                    .task_subjects()
                    .iter()
                    .any(|s| s.split('.').nth(1) == Some(family)),
                "{subject}"
            );
            let owners = durables
                .iter()
                .filter(|d| names.durable_subjects(d).contains(&subject))
                .count();
            assert_eq!(owners, 1, "{subject} must have exactly one durable");
        }
    }

    #[test]
    fn census_subjects_are_outside_every_stream() {
        let names = Names::new("lethe").unwrap();
        let subject = names.census_subject(&store("accounts"));
        assert_eq!(subject, "lethe.census.accounts");
        assert!(
            names
                .task_subjects()
                .iter()
                .all(|s| s.split('.').nth(1) != Some("census"))
        );
    }

    #[test]
    fn the_checkpoint_request_subject_is_outside_every_stream() {
        let names = Names::new("lethe").unwrap();
        assert_eq!(names.checkpoint_subject(), "lethe.audit.checkpoint");
        let captured = names.task_subjects().into_iter().chain([
            names.results_wildcard(),
            names.events_wildcard(),
            names.dead_wildcard(),
        ]);
        for wildcard in captured {
            let family = wildcard.split('.').nth(1);
            assert_ne!(family, Some("audit"), "{wildcard}");
        }
    }

    #[test]
    fn invalid_prefixes_are_refused() {
        for bad in ["", "Lethe", "le.the", "le*", "1abc", &"x".repeat(33)] {
            assert!(Names::new(bad).is_err(), "{bad}");
        }
    }
}
