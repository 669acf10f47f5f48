//! Redis: the data map's key templates rendered for the task's values (never a `SCAN` of the
//! database), erased with `UNLINK` in one atomic pipeline; restriction and objection as
//! membership of a set.

use std::collections::BTreeMap;

use redis::aio::ConnectionManager;

use super::{Flag, MAX_VALUES, render_all, still_holds, too_many, usable_values};
use crate::datamap::RedisStore;
use crate::ids::StoreName;
use crate::messages::{Identities, TaskReport};
use crate::stores::RedisHandle;
use crate::worker::TaskError;

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
        let mut all = Vec::with_capacity(self.spec.keys.len());
        let mut total = 0;
        for template in &self.spec.keys {
            let keys: Vec<String> = render_all(template, identities)
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

    pub(crate) async fn erase(&self, identities: &Identities) -> Result<TaskReport, TaskError> {
        let keys = self.keys(identities)?;
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

    pub(crate) async fn set_flag(
        &self,
        identities: &Identities,
        flag: Flag,
        value: bool,
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
