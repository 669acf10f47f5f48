//! How identity values are brought to one spelling before they are compared: the data map's
//! `normalize` table (per identity `email`, `phone` or `none`) and `phone_region`.
//!
//! The same person is filed as `Ada@Example.com` and stored as `ada@example.com`, asked for as
//! `020 7946 0000` and stored as `+44 20 7946 0000`: a receipt that says "nothing remains" must
//! have looked for every spelling. Request values are normalised at intake (keeping the value
//! as filed too), and stored values are compared in a normalised form by the connectors.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use phonenumber::Mode;
use phonenumber::country::Id as Region;
use serde::Deserialize;

/// How one identity's values are normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalization {
    /// Trimmed and lowercased; stored values compared case-insensitively.
    Email,
    /// E.164 (`+442079460000`); stored values compared with every separator removed, against
    /// each way the number is commonly written.
    Phone,
    /// Compared exactly as given.
    #[default]
    None,
}

impl Normalization {
    /// The normalisation an identity gets when the data map does not say: `email` and
    /// `*_email` are emails, `phone` and `*_phone` phones, anything else is compared as given.
    pub fn by_name(identity: &str) -> Self {
        let is = |kind: &str| identity == kind || identity.ends_with(&format!("_{kind}"));
        if is("email") {
            Normalization::Email
        } else if is("phone") {
            Normalization::Phone
        } else {
            Normalization::None
        }
    }
}

/// The normalisation of every identity of a data map, as the connectors and the intake use it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matching {
    /// Per identity, where the data map declares one (others go [`Normalization::by_name`]).
    pub rules: BTreeMap<String, Normalization>,
    /// The region national phone numbers (`020 7946 0000`) are read in, ISO 3166 (`GB`).
    pub phone_region: Option<String>,
}

/// Characters people put inside phone numbers; stripped before comparing (the SQL expressions
/// of the connectors strip every character but digits and `+`, to the same effect).
fn phone_digits(value: &str) -> String {
    value
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '+')
        .collect()
}

impl Matching {
    /// The normalisation of `identity`.
    pub fn rule(&self, identity: &str) -> Normalization {
        self.rules
            .get(identity)
            .copied()
            .unwrap_or_else(|| Normalization::by_name(identity))
    }

    fn region(&self) -> Option<Region> {
        self.phone_region
            .as_deref()
            .and_then(|r| Region::from_str(r).ok())
    }

    /// The one spelling of `value` for `identity`; `None` when a phone number cannot be read
    /// as one (it is then only compared as written, without separators).
    pub fn normalize(&self, identity: &str, value: &str) -> Option<String> {
        match self.rule(identity) {
            Normalization::Email => Some(value.trim().to_lowercase()),
            Normalization::Phone => self.e164(value),
            Normalization::None => Some(value.to_owned()),
        }
    }

    /// `value` as an E.164 number: read with the phone-number metadata (a national number in
    /// the default region); numbers the metadata does not know (a fictional country code)
    /// are kept when written internationally (`+` or `00`, 6 to 15 digits).
    fn e164(&self, value: &str) -> Option<String> {
        if let Ok(number) = phonenumber::parse(self.region(), value.trim()) {
            return Some(number.format().mode(Mode::E164).to_string());
        }
        let digits = phone_digits(value);
        let international = if let Some(rest) = digits.strip_prefix('+') {
            rest.to_owned()
        } else if let Some(rest) = digits.strip_prefix("00") {
            rest.to_owned()
        } else {
            return None;
        };
        ((6..=15).contains(&international.len())
            && international.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("+{international}"))
    }

    /// The values a request or a key template tries for `identity`: each value as given and
    /// its normalised spelling, each once, in order.
    pub fn spellings(&self, identity: &str, values: &[String]) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(values.len() * 2);
        for value in values {
            let as_given = value.trim().to_owned();
            let normalized = self.normalize(identity, value);
            for v in std::iter::once(as_given).chain(normalized) {
                if !v.is_empty() && seen.insert(v.clone()) {
                    out.push(v);
                }
            }
        }
        out
    }

    /// The separator-free spellings a stored phone number of the subject may have, for each
    /// of `values`: `+CCNSN`, `00CCNSN`, `+CC0NSN` (an international number written with the
    /// national prefix in brackets, `+44 (0)20 ...`), and where the number belongs to the
    /// default region, the national forms `0NSN` and `NSN`. The connectors compare these with
    /// the stored value stripped of everything but digits and `+`.
    pub fn phone_candidates(&self, values: &[&str]) -> Vec<String> {
        let mut out = BTreeSet::new();
        for value in values {
            let written = phone_digits(value);
            if !written.is_empty() {
                out.insert(written);
            }
            let Some(e164) = self.e164(value) else {
                continue;
            };
            let international = e164.trim_start_matches('+').to_owned();
            out.insert(format!("00{international}"));
            out.insert(e164.clone());
            let Ok(number) = phonenumber::parse(None, &e164) else {
                continue;
            };
            let code = number.code().value().to_string();
            let Some(national) = international.strip_prefix(&code) else {
                continue;
            };
            let metadata = number.metadata(&phonenumber::metadata::DATABASE);
            let prefix = metadata.and_then(|m| m.national_prefix()).unwrap_or("");
            if !prefix.is_empty() {
                out.insert(format!("+{code}{prefix}{national}"));
            }
            let home = self
                .region()
                .and_then(|r| phonenumber::metadata::DATABASE.by_id(r.as_ref()))
                .is_some_and(|m| m.country_code().to_string() == code);
            if home {
                out.insert(format!("{prefix}{national}"));
                out.insert(national.to_owned());
            }
        }
        out.into_iter().collect()
    }

    /// Problems of the declarations, each naming the key.
    pub(crate) fn problems(&self, declared: &BTreeSet<&str>) -> Vec<String> {
        let mut problems = Vec::new();
        for identity in self.rules.keys() {
            if !declared.contains(identity.as_str()) {
                problems.push(format!(
                    "normalize.{identity}: `{identity}` is not declared in `identities`"
                ));
            }
        }
        if let Some(region) = &self.phone_region
            && (Region::from_str(region).is_err()
                || phonenumber::metadata::DATABASE
                    .by_id(region.as_str())
                    .is_none())
        {
            problems.push(format!(
                "phone_region: `{region}` is not a region code the phone-number metadata knows \
                 (two capital letters, ISO 3166, e.g. \"GB\")"
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gb() -> Matching {
        Matching {
            rules: BTreeMap::new(),
            phone_region: Some("GB".to_owned()),
        }
    }

    #[test]
    fn emails_are_trimmed_and_lowercased() {
        let m = Matching::default();
        assert_eq!(
            m.normalize("email", " Evelyn.Godel@Example.NET ")
                .as_deref(),
            Some("evelyn.godel@example.net")
        );
        assert_eq!(
            m.spellings("billing_email", &["Ada@X.org".to_owned()]),
            vec!["Ada@X.org".to_owned(), "ada@x.org".to_owned()]
        );
        assert_eq!(m.normalize("user_id", "Ab").as_deref(), Some("Ab"));
    }

    #[test]
    fn phones_become_e164_whatever_their_separators_or_national_prefix() {
        let m = gb();
        for written in [
            "+44 20 7946 0000",
            "+44-20-7946-0000",
            "020 7946 0000",
            "0044 (20) 7946 0000",
        ] {
            assert_eq!(
                m.normalize("phone", written).as_deref(),
                Some("+442079460000"),
                "{written}"
            );
        }
        // A country code the metadata does not know stays as written internationally.
        assert_eq!(
            m.normalize("phone", "+999 841-768 664").as_deref(),
            Some("+999841768664")
        );
        assert_eq!(m.normalize("phone", "call me"), None);
    }

    #[test]
    fn phone_candidates_cover_international_and_national_spellings() {
        let candidates = gb().phone_candidates(&["+44 20 7946 0000"]);
        for spelling in [
            "+442079460000",
            "00442079460000",
            "+4402079460000",
            "02079460000",
            "2079460000",
        ] {
            assert!(candidates.iter().any(|c| c == spelling), "{spelling}");
        }
        // Outside the default region, national forms are somebody else's number.
        let candidates = Matching::default().phone_candidates(&["+44 20 7946 0000"]);
        assert!(!candidates.iter().any(|c| c == "02079460000"));
    }

    #[test]
    fn unknown_regions_and_identities_are_refused() {
        let m = Matching {
            rules: BTreeMap::from([("mail".to_owned(), Normalization::Email)]),
            phone_region: Some("XX".to_owned()),
        };
        let problems = m.problems(&BTreeSet::from(["email"]));
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
