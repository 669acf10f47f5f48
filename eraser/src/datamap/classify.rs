//! Which columns hold personal data, by their names and by the values sampled from them
//! (emails, phone numbers, IP addresses, people's names, free text that contains emails).
//! Evidence is written as names and counts, never a value.

use lethe_stores::discovery::{Column, ColumnKind, Table};

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    /// Email addresses.
    Email,
    /// Phone numbers.
    Phone,
    /// IP addresses.
    Ip,
    /// People's names.
    Name,
    /// Postal addresses, birth dates and other direct descriptions of a person.
    Contact,
    /// Free text in which emails were found.
    FreeText,
}

impl Category {
    /// The category as the draft and the check name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Email => "email",
            Category::Phone => "phone",
            Category::Ip => "IP address",
            Category::Name => "name",
            Category::Contact => "address or other contact detail",
            Category::FreeText => "free text containing emails",
        }
    }
}

/// A column flagged as personal data, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The column.
    pub column: String,
    /// What it holds.
    pub category: Category,
    /// Why: the name, and how many sampled values fit (counts only).
    pub evidence: String,
}

/// Share of sampled values that must fit a pattern for the values alone to decide.
const VALUE_SHARE: f64 = 0.6;

/// Every column of `table` that holds personal data.
pub fn classify(table: &Table) -> Vec<Finding> {
    table.columns.iter().filter_map(classify_column).collect()
}

fn classify_column(column: &Column) -> Option<Finding> {
    if !matches!(column.kind, ColumnKind::Text | ColumnKind::Other) {
        return by_name_only(column);
    }
    let values = column.samples.values();
    let n = values.len();
    let count = |test: fn(&str) -> bool| values.iter().filter(|v| test(v)).count();
    let share = |k: usize| n > 0 && (k as f64) / (n as f64) >= VALUE_SHARE;
    let name = column.name.to_ascii_lowercase();
    let evidence = |why: &str, k: usize| format!("{why}; {k} of {n} sampled values fit");

    let emails = count(is_email);
    if share(emails) || (name_says_email(&name) && (n == 0 || emails > 0)) {
        return Some(finding(column, Category::Email, evidence("email", emails)));
    }
    let phones = count(is_phone);
    if share(phones) || (name_says_phone(&name) && (n == 0 || phones > 0)) {
        return Some(finding(column, Category::Phone, evidence("phone", phones)));
    }
    let ips = count(is_ip);
    if share(ips) || (name_says_ip(&name) && (n == 0 || ips > 0)) {
        return Some(finding(column, Category::Ip, evidence("IP address", ips)));
    }
    let containing = count(contains_email);
    if containing > 0 {
        return Some(finding(
            column,
            Category::FreeText,
            evidence("free text holding email addresses", containing),
        ));
    }
    let names = count(looks_like_name);
    if name_says_name(&name) || (share(names) && name_hints_person(&name)) {
        return Some(finding(
            column,
            Category::Name,
            evidence("a person's name", names),
        ));
    }
    by_name_only(column)
}

/// Columns whose names alone say what they hold (addresses, birth dates).
fn by_name_only(column: &Column) -> Option<Finding> {
    let name = column.name.to_ascii_lowercase();
    let contact = [
        "address",
        "street",
        "postcode",
        "postal_code",
        "zip",
        "birth",
        "dob",
    ];
    if contact.iter().any(|w| name.contains(w)) && !name.contains("ip_address") {
        return Some(finding(
            column,
            Category::Contact,
            "named like an address or birth date".to_owned(),
        ));
    }
    None
}

fn finding(column: &Column, category: Category, evidence: String) -> Finding {
    Finding {
        column: column.name.clone(),
        category,
        evidence: format!("column `{}`: {evidence}", column.name),
    }
}

fn name_says_email(name: &str) -> bool {
    name.contains("email") || name.contains("e_mail") || name == "mail"
}

fn name_says_phone(name: &str) -> bool {
    name.contains("phone")
        || ["mobile", "msisdn", "tel"].iter().any(|w| {
            name == *w || name.ends_with(&format!("_{w}")) || name.starts_with(&format!("{w}_"))
        })
}

fn name_says_ip(name: &str) -> bool {
    name == "ip" || name.ends_with("_ip") || name.starts_with("ip_") || name.contains("ip_addr")
}

fn name_says_name(name: &str) -> bool {
    [
        "first_name",
        "last_name",
        "full_name",
        "given_name",
        "family_name",
        "surname",
        "display_name",
        "cardholder_name",
        "billing_name",
        "contact_name",
        "recipient_name",
        "customer_name",
    ]
    .iter()
    .any(|w| name == *w || name.ends_with(w))
}

fn name_hints_person(name: &str) -> bool {
    name.contains("name") || name.contains("author") || name.contains("recipient")
}

/// `local@domain.tld`, no spaces.
pub fn is_email(value: &str) -> bool {
    let value = value.trim();
    let Some((local, domain)) = value.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !value.chars().any(char::is_whitespace)
}

/// Seven to fifteen digits written with the usual separators, optionally after `+`.
pub fn is_phone(value: &str) -> bool {
    let value = value.trim();
    let digits = value.chars().filter(char::is_ascii_digit).count();
    (7..=15).contains(&digits)
        && value
            .chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c))
        && (value.starts_with('+')
            || value.starts_with('0')
            || value.contains(' ')
            || value.contains('-'))
}

/// An IPv4 or IPv6 address.
pub fn is_ip(value: &str) -> bool {
    let value = value.trim();
    let bare = value.split('/').next().unwrap_or(value);
    bare.parse::<std::net::IpAddr>().is_ok()
}

/// Text with an email address somewhere in it.
fn contains_email(value: &str) -> bool {
    value
        .split(|c: char| c.is_whitespace() || ",;<>()\"'".contains(c))
        .any(|word| is_email(word.trim_end_matches(['.', ':', '!', '?'])))
        && value.chars().any(char::is_whitespace)
}

/// One to three capitalised words of letters.
fn looks_like_name(value: &str) -> bool {
    let words: Vec<&str> = value.split_whitespace().collect();
    (1..=3).contains(&words.len())
        && words.iter().all(|w| {
            w.chars().next().is_some_and(char::is_uppercase)
                && w.chars()
                    .all(|c| c.is_alphabetic() || c == '-' || c == '\'')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_recognised_by_their_shape() {
        assert!(is_email("ada@example.com"));
        assert!(!is_email("not an email"));
        assert!(is_phone("+44 20 7946 0000"));
        assert!(!is_phone("12345"));
        assert!(!is_phone("42"));
        assert!(is_ip("192.0.2.1"));
        assert!(is_ip("2001:db8::1"));
        assert!(contains_email("please write to ada@example.com."));
        assert!(looks_like_name("Ada Lovelace"));
        assert!(!looks_like_name("order shipped"));
    }
}
