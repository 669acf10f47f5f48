//! Redis: the data map's key templates rendered for the task's values (never a `SCAN` of the
//! database), erased with `UNLINK` in one atomic pipeline, collected as one JSON record per
//! key (its type, time to live and value); restriction and objection as membership of a set.

use std::collections::{BTreeMap, BTreeSet};

use redis::Value;
use redis::aio::ConnectionManager;
use serde::Serialize;
use serde_json::Value as Json;

use lethe_common::datamap::RedisStore;
use lethe_common::ids::StoreName;
use lethe_common::messages::{Identities, TaskReport};
use lethe_common::worker::TaskError;

use crate::connection::RedisHandle;
use crate::connector::{CollectSink, Flag};
use crate::values::{
    MAX_VALUES, Rendered, render_all, still_holds, too_many, usable_values, with_spellings,
};

/// A Redis store.
pub(crate) struct RedisConnector {
    store: StoreName,
    handle: RedisHandle,
    spec: RedisStore,
}

impl RedisConnector {
    pub(crate) fn new(store: StoreName, handle: RedisHandle, spec: RedisStore) -> Self {
        Self {
            store,
            handle,
            spec,
        }
    }

    fn error(&self, action: &str, error: &redis::RedisError) -> TaskError {
        use redis::ErrorKind;
        let place = format!("store `{}`: {action} failed", self.store);
        // Connection trouble is worth a retry; a server's refusal (wrong type, no permission)
        // or a client misconfiguration is not. Only the category and code are kept: the
        // server's detail could quote a key.
        let transient = error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || matches!(
                error.kind(),
                ErrorKind::Server(
                    redis::ServerErrorKind::BusyLoading
                        | redis::ServerErrorKind::TryAgain
                        | redis::ServerErrorKind::ClusterDown
                        | redis::ServerErrorKind::MasterDown
                        | redis::ServerErrorKind::ReadOnly
                )
            );
        let detail = match error.code() {
            Some(code) => format!("{} ({code})", error.category()),
            None => error.category().to_owned(),
        };
        if transient {
            TaskError::Transient(anyhow::anyhow!("{detail}").context(place))
        } else {
            TaskError::Permanent {
                code: "store_error",
                reason: format!("{place}: {detail}"),
            }
        }
    }

    async fn connection(&self) -> Result<ConnectionManager, TaskError> {
        self.handle
            .connection()
            .await
            .map_err(|e| self.error("connecting", &e))
    }

    /// The subject's keys per template, prefixed.
    fn keys(&self, identities: &Identities) -> Result<Vec<(String, Vec<String>)>, TaskError> {
        let identities = with_spellings(identities, &self.spec.matching);
        let mut all = Vec::with_capacity(self.spec.keys.len());
        let mut total = 0;
        for template in &self.spec.keys {
            let keys: Vec<String> = render_all(template, &identities)
                .into_iter()
                .map(|key| format!("{}{key}", self.spec.key_prefix))
                .collect();
            total += keys.len();
            if total > MAX_VALUES {
                return Err(too_many(&self.store, "keys"));
            }
            all.push((template.clone(), keys));
        }
        Ok(all)
    }

    /// Writes one record per existing key of the subject (each key once, in the first template
    /// that names it): `{"key", "type", "ttl_seconds", "value"}`, the key without the store's
    /// `key_prefix`.
    pub(crate) async fn collect<K: CollectSink>(
        &self,
        identities: &Identities,
        sink: &mut K,
    ) -> Result<TaskReport, TaskError> {
        let keys = self.keys(identities)?;
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut counts = BTreeMap::new();
        let mut connection: Option<ConnectionManager> = None;
        for (template, keys) in &keys {
            sink.begin(template).await?;
            let keys: Vec<&str> = keys
                .iter()
                .map(String::as_str)
                .filter(|k| seen.insert(k))
                .collect();
            let mut found = 0u64;
            if !keys.is_empty() {
                let connection = match &mut connection {
                    Some(connection) => connection,
                    None => connection.insert(self.connection().await?),
                };
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("TYPE").arg(*key).cmd("PTTL").arg(*key);
                }
                let answers: Vec<Value> = pipe
                    .query_async(connection)
                    .await
                    .map_err(|e| self.error("reading key types", &e))?;
                for (key, answer) in keys.iter().zip(answers.chunks(2)) {
                    let kind = match answer.first() {
                        Some(Value::SimpleString(kind)) => kind.clone(),
                        Some(Value::BulkString(kind)) => String::from_utf8_lossy(kind).into_owned(),
                        _ => continue,
                    };
                    if kind == "none" {
                        continue;
                    }
                    let ttl_seconds = match answer.get(1) {
                        Some(Value::Int(ms)) if *ms >= 0 => Some((ms + 999) / 1000),
                        _ => None,
                    };
                    // A key that expired since its type was read has nothing left to show.
                    let Some(value) = self.value(connection, key, &kind).await? else {
                        continue;
                    };
                    let record = KeyRecord {
                        key: key.strip_prefix(&self.spec.key_prefix).unwrap_or(key),
                        kind: &kind,
                        ttl_seconds,
                        value,
                    };
                    let json = serde_json::to_vec(&record).map_err(|_| TaskError::Permanent {
                        code: "store_error",
                        reason: format!(
                            "store `{}`: a value cannot be written as JSON",
                            self.store
                        ),
                    })?;
                    sink.record(&json).await?;
                    found += 1;
                }
            }
            sink.end().await?;
            counts.insert(template.clone(), found);
        }
        Ok(TaskReport {
            counts,
            ..TaskReport::default()
        })
    }

    /// The value of `key`, of Redis type `kind`, as JSON; `None` if the key is gone.
    async fn value(
        &self,
        connection: &mut ConnectionManager,
        key: &str,
        kind: &str,
    ) -> Result<Option<Json>, TaskError> {
        let command = match kind {
            "string" => redis::cmd("GET").arg(key).clone(),
            "hash" => redis::cmd("HGETALL").arg(key).clone(),
            "list" => redis::cmd("LRANGE").arg(key).arg(0).arg(-1).clone(),
            "set" => redis::cmd("SMEMBERS").arg(key).clone(),
            "zset" => redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .clone(),
            "stream" => redis::cmd("XRANGE").arg(key).arg("-").arg("+").clone(),
            // A module's type: its name is recorded, its value cannot be read generically.
            _ => return Ok(Some(Json::Null)),
        };
        let value: Value = command
            .query_async(connection)
            .await
            .map_err(|e| self.error("reading a value", &e))?;
        let empty = match &value {
            Value::Nil => true,
            Value::Array(items) | Value::Set(items) => items.is_empty(),
            Value::Map(items) => items.is_empty(),
            _ => false,
        };
        if empty {
            return Ok(None);
        }
        Ok(Some(match kind {
            "hash" => Json::Object(pairs(value).into_iter().collect()),
            "set" => {
                let mut members = items(value);
                members.sort_by_key(|m| m.to_string());
                Json::Array(members)
            }
            "zset" => Json::Array(
                scored(value)
                    .into_iter()
                    .map(|(member, score)| serde_json::json!({ "member": member, "score": score }))
                    .collect(),
            ),
            _ => to_json(value),
        }))
    }

    pub(crate) async fn erase(
        &self,
        identities: &Identities,
        dry_run: bool,
    ) -> Result<TaskReport, TaskError> {
        let keys = self.keys(identities)?;
        if dry_run {
            return self.count_existing(&keys).await;
        }
        let mut counts: BTreeMap<String, u64> = keys.iter().map(|(t, _)| (t.clone(), 0)).collect();
        let with_keys: Vec<&(String, Vec<String>)> =
            keys.iter().filter(|(_, k)| !k.is_empty()).collect();
        if with_keys.is_empty() {
            return Ok(TaskReport {
                counts,
                remaining: Some(0),
                ..TaskReport::default()
            });
        }
        let mut connection = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (_, keys) in &with_keys {
            pipe.cmd("UNLINK").arg(keys);
        }
        let unlinked: Vec<u64> = pipe
            .query_async(&mut connection)
            .await
            .map_err(|e| self.error("unlinking keys", &e))?;
        for ((template, _), n) in with_keys.iter().zip(unlinked) {
            counts.insert(template.clone(), n);
        }

        let mut pipe = redis::pipe();
        for (_, keys) in &with_keys {
            pipe.cmd("EXISTS").arg(keys);
        }
        let left: Vec<u64> = pipe
            .query_async(&mut connection)
            .await
            .map_err(|e| self.error("verifying the erasure", &e))?;
        let remaining: u64 = left.iter().sum();
        if remaining > 0 {
            let names: Vec<String> = with_keys
                .iter()
                .zip(&left)
                .filter(|(_, n)| **n > 0)
                .map(|((template, _), n)| format!("{template}: {n}"))
                .collect();
            return Err(still_holds(&self.store, remaining, &names));
        }
        Ok(TaskReport {
            counts,
            remaining: Some(0),
            ..TaskReport::default()
        })
    }

    /// A dry run's erasure: the keys that exist per template, each counted once (as `UNLINK`
    /// would count it, in the first template that names it).
    async fn count_existing(
        &self,
        keys: &[(String, Vec<String>)],
    ) -> Result<TaskReport, TaskError> {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let distinct: Vec<(&String, Vec<&str>)> = keys
            .iter()
            .map(|(template, keys)| {
                let keys = keys
                    .iter()
                    .map(String::as_str)
                    .filter(|k| seen.insert(k))
                    .collect();
                (template, keys)
            })
            .collect();
        let mut counts: BTreeMap<String, u64> = keys.iter().map(|(t, _)| (t.clone(), 0)).collect();
        let with_keys: Vec<&(&String, Vec<&str>)> =
            distinct.iter().filter(|(_, k)| !k.is_empty()).collect();
        if !with_keys.is_empty() {
            let mut connection = self.connection().await?;
            let mut pipe = redis::pipe();
            for (_, keys) in &with_keys {
                pipe.cmd("EXISTS").arg(keys);
            }
            let existing: Vec<u64> = pipe
                .query_async(&mut connection)
                .await
                .map_err(|e| self.error("counting keys", &e))?;
            for ((template, _), n) in with_keys.iter().zip(existing) {
                counts.insert((*template).clone(), n);
            }
        }
        Ok(TaskReport {
            counts,
            ..TaskReport::default()
        })
    }

    pub(crate) async fn set_flag(
        &self,
        identities: &Identities,
        flag: Flag,
        value: bool,
        dry_run: bool,
    ) -> Result<TaskReport, TaskError> {
        let set = match flag {
            Flag::Restrict => &self.spec.restrict,
            Flag::Object => &self.spec.object,
        };
        let Some(set) = set else {
            return Ok(TaskReport::default());
        };
        let members: Vec<&str> = identities
            .get(&set.identity)
            .map(|v| usable_values(v))
            .unwrap_or_default();
        let mut counts = BTreeMap::from([(set.set.clone(), 0)]);
        if members.is_empty() {
            return Ok(TaskReport {
                counts,
                ..TaskReport::default()
            });
        }
        if members.len() > MAX_VALUES {
            return Err(too_many(&self.store, "identity values"));
        }
        let key = format!("{}{}", self.spec.key_prefix, set.set);
        let mut connection = self.connection().await?;
        if dry_run {
            // What SADD would add (members missing) or SREM would remove (members present).
            let mut distinct = members.clone();
            distinct.sort_unstable();
            distinct.dedup();
            let present: Vec<bool> = redis::cmd("SMISMEMBER")
                .arg(&key)
                .arg(&distinct)
                .query_async(&mut connection)
                .await
                .map_err(|e| self.error("reading the flag set", &e))?;
            let changed = present.iter().filter(|p| **p != value).count() as u64;
            counts.insert(set.set.clone(), changed);
            return Ok(TaskReport {
                counts,
                ..TaskReport::default()
            });
        }
        let command = if value { "SADD" } else { "SREM" };
        let changed: u64 = redis::cmd(command)
            .arg(&key)
            .arg(&members)
            .query_async(&mut connection)
            .await
            .map_err(|e| self.error("changing the flag set", &e))?;
        counts.insert(set.set.clone(), changed);
        Ok(TaskReport {
            counts,
            ..TaskReport::default()
        })
    }
}

/// One collected key.
#[derive(Serialize)]
struct KeyRecord<'a> {
    key: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    ttl_seconds: Option<i64>,
    value: Json,
}

/// Bytes as JSON text when they are UTF-8, else as `{"hex": "..."}`.
fn text(bytes: Vec<u8>) -> Json {
    match String::from_utf8(bytes) {
        Ok(text) => Json::String(text),
        Err(error) => serde_json::json!({ "hex": hex::encode(error.into_bytes()) }),
    }
}

/// A key of a JSON object.
fn key_text(value: Value) -> String {
    match to_json(value) {
        Json::String(text) => text,
        other => other.to_string(),
    }
}

/// Any reply as JSON.
fn to_json(value: Value) -> Json {
    match value {
        Value::Nil => Json::Null,
        Value::Int(n) => Json::from(n),
        Value::BulkString(bytes) => text(bytes),
        Value::Array(items) | Value::Set(items) | Value::Push { data: items, .. } => {
            Json::Array(items.into_iter().map(to_json).collect())
        }
        Value::SimpleString(text) => Json::String(text),
        Value::Okay => Json::String("OK".to_owned()),
        Value::Map(pairs) => Json::Object(
            pairs
                .into_iter()
                .map(|(k, v)| (key_text(k), to_json(v)))
                .collect(),
        ),
        Value::Attribute { data, .. } => to_json(*data),
        Value::Double(n) => serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number),
        Value::Boolean(b) => Json::Bool(b),
        Value::VerbatimString { text, .. } => Json::String(text),
        Value::BigNumber(n) => Json::String(String::from_utf8_lossy(&n).into_owned()),
        Value::ServerError(_) => Json::Null,
        _ => Json::Null,
    }
}

/// The elements of an array or set reply.
fn items(value: Value) -> Vec<Json> {
    match value {
        Value::Array(items) | Value::Set(items) => items.into_iter().map(to_json).collect(),
        other => vec![to_json(other)],
    }
}

/// Field/value pairs of a hash reply: a map (RESP3) or a flat array (RESP2).
fn pairs(value: Value) -> BTreeMap<String, Json> {
    match value {
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| (key_text(k), to_json(v)))
            .collect(),
        Value::Array(items) => {
            let mut items = items.into_iter();
            let mut out = BTreeMap::new();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                out.insert(key_text(k), to_json(v));
            }
            out
        }
        _ => BTreeMap::new(),
    }
}

/// Member/score pairs of a `ZRANGE ... WITHSCORES` reply: a flat array (RESP2) or an array of
/// pairs (RESP3).
fn scored(value: Value) -> Vec<(Json, Json)> {
    let Value::Array(items) = value else {
        return Vec::new();
    };
    let score = |v: Value| match v {
        Value::Double(n) => serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number),
        Value::BulkString(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .and_then(serde_json::Number::from_f64)
            .map_or(Json::Null, Json::Number),
        other => to_json(other),
    };
    if items.iter().all(|i| matches!(i, Value::Array(_))) {
        return items
            .into_iter()
            .filter_map(|pair| match pair {
                Value::Array(mut pair) if pair.len() == 2 => {
                    let s = pair.pop()?;
                    let m = pair.pop()?;
                    Some((to_json(m), score(s)))
                }
                _ => None,
            })
            .collect();
    }
    let mut items = items.into_iter();
    let mut out = Vec::new();
    while let (Some(m), Some(s)) = (items.next(), items.next()) {
        out.push((to_json(m), score(s)));
    }
    out
}

/// A batch of erasures: one atomic pipeline of `UNLINK`s for every subject of the batch (one
/// per subject and template, so each subject's counts are its own, a key two subjects share
/// counted for the first), then one pipeline of `EXISTS` to query them all again.
impl RedisConnector {
    pub(crate) async fn erase_batch(
        &self,
        subjects: &[&Identities],
    ) -> Result<Vec<Result<TaskReport, TaskError>>, TaskError> {
        // Per subject its keys per template, or its own error (too many keys).
        let keyed: Vec<Result<Rendered, TaskError>> =
            subjects.iter().map(|i| self.keys(i)).collect();
        let commands: Vec<(usize, &String, &Vec<String>)> = keyed
            .iter()
            .enumerate()
            .filter_map(|(i, k)| k.as_ref().ok().map(|k| (i, k)))
            .flat_map(|(i, k)| {
                k.iter()
                    .filter(|(_, keys)| !keys.is_empty())
                    .map(move |(template, keys)| (i, template, keys))
            })
            .collect();
        let mut unlinked: Vec<u64> = Vec::new();
        let mut left: Vec<u64> = Vec::new();
        if !commands.is_empty() {
            let mut connection = self.connection().await?;
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (_, _, keys) in &commands {
                pipe.cmd("UNLINK").arg(*keys);
            }
            unlinked = pipe
                .query_async(&mut connection)
                .await
                .map_err(|e| self.error("unlinking keys", &e))?;
            let mut pipe = redis::pipe();
            for (_, _, keys) in &commands {
                pipe.cmd("EXISTS").arg(*keys);
            }
            left = pipe
                .query_async(&mut connection)
                .await
                .map_err(|e| self.error("verifying the erasure", &e))?;
        }
        let mut counts: Vec<BTreeMap<String, u64>> = keyed
            .iter()
            .map(|k| match k {
                Ok(k) => k.iter().map(|(t, _)| (t.clone(), 0)).collect(),
                Err(_) => BTreeMap::new(),
            })
            .collect();
        let mut remaining: Vec<Vec<String>> = vec![Vec::new(); subjects.len()];
        let mut remaining_total = vec![0u64; subjects.len()];
        for (((subject, template, _), n), l) in commands.iter().zip(&unlinked).zip(&left) {
            counts[*subject].insert((*template).clone(), *n);
            if *l > 0 {
                remaining[*subject].push(format!("{template}: {l}"));
                remaining_total[*subject] += l;
            }
        }
        Ok(keyed
            .into_iter()
            .zip(counts)
            .zip(remaining.iter().zip(remaining_total))
            .map(|((keyed, counts), (names, total))| {
                keyed?;
                if total > 0 {
                    return Err(still_holds(&self.store, total, names));
                }
                Ok(TaskReport {
                    counts,
                    remaining: Some(0),
                    ..TaskReport::default()
                })
            })
            .collect())
    }

    /// Whether the server answers now.
    pub(crate) async fn reachable(&self) -> bool {
        match self.connection().await {
            Ok(mut connection) => redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .is_ok(),
            Err(_) => false,
        }
    }
}
