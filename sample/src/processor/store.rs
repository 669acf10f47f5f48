//! The processor's own store: customers and charges in memory, written to one JSON file
//! atomically (a temporary file renamed over it) after every change, so a restart finds what
//! the last answered request left.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Everything the processor holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Data {
    /// Customers by id (`cus_000007`), Stripe-shaped objects.
    pub customers: BTreeMap<String, Value>,
    /// Charges, each naming its customer; kept after the customer is deleted, as Stripe does.
    pub charges: Vec<Value>,
}

/// The data and the file it lives in.
pub struct Store {
    path: PathBuf,
    /// The data.
    pub data: Data,
}

impl Store {
    /// Reads `path`, or, when it does not exist, seeds `subjects` sample subjects of `seed`
    /// (one customer each, one charge per invoice) and writes it.
    pub fn open(path: &Path, subjects: u64, seed: u64) -> Result<Self> {
        if path.exists() {
            let text =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let data = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not the processor's data", path.display()))?;
            return Ok(Self {
                path: path.to_owned(),
                data,
            });
        }
        let mut store = Self {
            path: path.to_owned(),
            data: Data::default(),
        };
        for index in 1..=subjects {
            let subject = lethe_sample::subject(seed, index);
            let id = customer_id(index);
            let user = &subject.user;
            store.data.customers.insert(
                id.clone(),
                json!({
                    "id": id,
                    "object": "customer",
                    "email": user.email,
                    "phone": user.phone,
                    "name": format!("{} {}", user.first_name, user.last_name),
                    "address": { "country": user.country },
                    "created": user.created_at.timestamp(),
                    "metadata": {},
                }),
            );
            for invoice in &subject.invoices {
                store.data.charges.push(json!({
                    "id": format!("ch_{:08}", invoice.id),
                    "object": "charge",
                    "customer": id,
                    "amount": invoice.amount_cents,
                    "currency": "eur",
                    "billing_details": {
                        "name": invoice.billing_name,
                        "address": { "line1": invoice.billing_address, "country": invoice.country },
                    },
                }));
            }
        }
        store.save()?;
        Ok(store)
    }

    /// Writes the data: a temporary file beside it, then renamed over it.
    pub fn save(&self) -> Result<()> {
        let temporary = self.path.with_extension("json.tmp");
        std::fs::write(&temporary, serde_json::to_vec(&self.data)?)
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        std::fs::rename(&temporary, &self.path)
            .with_context(|| format!("cannot replace {}", self.path.display()))?;
        Ok(())
    }
}

/// The customer id of sample subject `index`.
pub fn customer_id(index: u64) -> String {
    format!("cus_{index:06}")
}
