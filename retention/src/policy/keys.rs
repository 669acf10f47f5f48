//! The layout of Lethe's bucket as retention reads it, and what of a key may be reported.

use uuid::Uuid;

/// Where the exporter writes archives in Lethe's bucket (`exports/<request>/<request>.zip`).
pub const EXPORTS_PREFIX: &str = "exports/";
/// Where the exporter stages fragments (`staging/<request>/...`).
pub const STAGING_PREFIX: &str = "staging/";

/// The first two levels of a key (`staging/<request>/`), which never name a subject's object.
pub(super) fn key_prefix(key: &str) -> String {
    let mut parts = key.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), Some(_)) => format!("{a}/{b}/"),
        (Some(a), Some(_), None) => format!("{a}/"),
        _ => String::new(),
    }
}

/// The request id in `staging/<request>/...` or `exports/<request>/...`.
pub(super) fn request_in(key: &str, prefix: &str) -> Option<Uuid> {
    let rest = key.strip_prefix(prefix)?;
    Uuid::parse_str(rest.split('/').next()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_reported_by_their_first_two_levels_only() {
        assert_eq!(
            key_prefix("staging/0199/files/avatars/42/me.png"),
            "staging/0199/"
        );
        assert_eq!(key_prefix("exports/0199/0199.zip"), "exports/0199/");
        assert_eq!(key_prefix("staging/x"), "staging/");
        let id = Uuid::new_v4();
        assert_eq!(
            request_in(
                &format!("staging/{id}/accounts/users.ndjson"),
                STAGING_PREFIX
            ),
            Some(id)
        );
        assert_eq!(request_in("staging/not-an-id/x", STAGING_PREFIX), None);
    }
}
