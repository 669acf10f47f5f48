//! Redis key templates (`session:{customer_id}`) and S3 prefix templates
//! (`avatars/{customer_id}/`) from sampled keys: keys are grouped by shape (numbers, emails and
//! UUIDs standing for placeholders), and each placeholder is named after the identity whose
//! sampled values it shares most. Only shapes and counts leave this module.

use std::collections::{BTreeMap, BTreeSet};

use super::classify::is_email;

/// Sampled values of one identity (its values as the SQL stores hold them).
#[derive(Debug, Default)]
pub struct IdentityValues {
    /// The identity's name.
    pub name: String,
    /// Whether it holds emails (a key segment shaped like an email is this identity's).
    pub email: bool,
    /// The values sampled.
    pub values: BTreeSet<String>,
}

/// A group of keys with the same shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The template: placeholders named by identity where one was found, `{?}` where not.
    pub template: String,
    /// Keys sampled of this shape.
    pub keys: usize,
    /// Per placeholder that names an identity: how many sampled segments were among that
    /// identity's sampled values.
    pub evidence: Vec<(String, usize, usize)>,
}

impl Pattern {
    /// Whether every placeholder names an identity (and there is at least one).
    pub fn is_subjects(&self) -> bool {
        !self.evidence.is_empty() && !self.template.contains("{?}")
    }
}

/// The shape of one segment.
fn shape(segment: &str) -> Option<&'static str> {
    if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
        Some("#")
    } else if is_email(segment) {
        Some("@")
    } else if segment.len() == 36 && segment.chars().filter(|c| *c == '-').count() == 4 {
        Some("uuid")
    } else {
        None
    }
}

/// Groups `keys` (split at `separator`) into patterns. For S3 (`directories`), the last
/// segment (the file) is dropped and a template ends after its first identity, with `/`.
pub fn patterns(
    keys: &[String],
    separator: char,
    directories: bool,
    identities: &[IdentityValues],
) -> Vec<Pattern> {
    // shape -> the keys' segments of that shape
    let mut groups: BTreeMap<Vec<String>, Vec<Vec<&str>>> = BTreeMap::new();
    for key in keys {
        let mut segments: Vec<&str> = key.split(separator).collect();
        if directories {
            segments.pop();
            if segments.is_empty() {
                continue;
            }
        }
        let shaped: Vec<String> = segments
            .iter()
            .map(|s| shape(s).map_or_else(|| (*s).to_owned(), |p| format!("{{{p}}}")))
            .collect();
        groups.entry(shaped).or_default().push(segments);
    }
    let mut out: BTreeMap<String, Pattern> = BTreeMap::new();
    for (shaped, members) in groups {
        let mut template = Vec::new();
        let mut evidence = Vec::new();
        for (position, part) in shaped.iter().enumerate() {
            let placeholder = matches!(part.as_str(), "{#}" | "{@}" | "{uuid}");
            if !placeholder {
                template.push(part.clone());
                continue;
            }
            let found = best_identity(&members, position, part == "{@}", identities);
            match found {
                Some((name, hits)) => {
                    template.push(format!("{{{name}}}"));
                    evidence.push((name, hits, members.len()));
                    if directories {
                        // Every object under the subject's folder is the subject's.
                        break;
                    }
                }
                None => template.push("{?}".to_owned()),
            }
        }
        let mut text = template.join(&separator.to_string());
        if directories {
            text.push('/');
        }
        let entry = out.entry(text.clone()).or_insert(Pattern {
            template: text,
            keys: 0,
            evidence: Vec::new(),
        });
        entry.keys += members.len();
        for (name, hits, total) in evidence {
            match entry.evidence.iter_mut().find(|(n, _, _)| *n == name) {
                Some(e) => {
                    e.1 += hits;
                    e.2 += total;
                }
                None => entry.evidence.push((name, hits, total)),
            }
        }
    }
    out.into_values().collect()
}

/// The identity whose sampled values the segments at `position` share most (emails: the
/// email identity even without shared values).
fn best_identity(
    members: &[Vec<&str>],
    position: usize,
    emails: bool,
    identities: &[IdentityValues],
) -> Option<(String, usize)> {
    let mut best: Option<(String, usize)> = None;
    for identity in identities {
        let hits = members
            .iter()
            .filter(|m| {
                m.get(position)
                    .is_some_and(|v| identity.values.contains(*v))
            })
            .count();
        let fits = hits > 0 || (emails && identity.email);
        if fits && best.as_ref().is_none_or(|(_, h)| hits > *h) {
            best = Some((identity.name.clone(), hits));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Vec<IdentityValues> {
        vec![
            IdentityValues {
                name: "customer_id".into(),
                email: false,
                values: ["1", "2", "3"].map(String::from).into(),
            },
            IdentityValues {
                name: "email".into(),
                email: true,
                values: BTreeSet::new(),
            },
        ]
    }

    #[test]
    fn keys_become_templates_named_by_the_identity_they_share_values_with() {
        let keys: Vec<String> = [
            "session:1",
            "session:2",
            "prefs:a@example.com",
            "stats:daily",
        ]
        .map(String::from)
        .into();
        let found = patterns(&keys, ':', false, &ids());
        let templates: Vec<&str> = found.iter().map(|p| p.template.as_str()).collect();
        assert_eq!(
            templates,
            ["prefs:{email}", "session:{customer_id}", "stats:daily"]
        );
        assert!(found[1].is_subjects() && !found[2].is_subjects());
    }

    #[test]
    fn object_keys_become_folder_templates() {
        let keys: Vec<String> = ["avatars/1/a.png", "avatars/2/b.png", "public/logo.png"]
            .map(String::from)
            .into();
        let found = patterns(&keys, '/', true, &ids());
        assert_eq!(found[0].template, "avatars/{customer_id}/");
        assert_eq!(found[0].keys, 2);
        assert!(!found[1].is_subjects());
    }
}
