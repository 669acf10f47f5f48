//! Reading the `Cookie` header and writing `Set-Cookie` for the pages' two cookies.

use axum::http::HeaderMap;
use axum::http::header;

/// The value of cookie `name` in the request, if any.
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` value: HttpOnly and SameSite=Strict always (a page's cookies are never needed
/// by script or by another site), Secure when served over TLS. `max_age` 0 deletes it.
pub fn set(name: &str, value: &str, path: &str, max_age_secs: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{name}={value}; Path={path}; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{secure}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; lethe_session=x.y; b=2"),
        );
        assert_eq!(get(&headers, "lethe_session"), Some("x.y"));
        assert_eq!(get(&headers, "c"), None);
        assert!(set("n", "v", "/", 10, true).ends_with("HttpOnly; SameSite=Strict; Secure"));
    }
}
