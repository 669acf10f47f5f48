//! The page shell: the document, the stylesheet and script from `/console/assets/`, and the
//! console's navigation.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use crate::pages::assets;

/// A page without navigation (login, privacy center, errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Lethe" }
                link rel="stylesheet" href=(assets::STYLE_PATH);
                script src=(assets::SCRIPT_PATH) defer {}
            }
            body { main { (body) } }
        }
    }
}

/// A console page: navigation, who is logged in, and the content.
pub fn console(title: &str, who: &str, csrf: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Lethe console" }
                link rel="stylesheet" href=(assets::STYLE_PATH);
                script src=(assets::SCRIPT_PATH) defer {}
            }
            body {
                nav {
                    strong { "Lethe" }
                    a href="/console" { "Dashboard" }
                    a href="/console/requests" { "Requests" }
                    a href="/console/incidents" { "Incidents" }
                    a href="/console/backups" { "Backups & retention" }
                    span.who { (who) }
                    form method="post" action="/console/logout" {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" { "Log out" }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// "in 3 d 4 h" or "5 h ago": a deadline as a person reads it.
pub fn countdown(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let delta = at - now;
    let (past, secs) = if delta.num_seconds() < 0 {
        (true, -delta.num_seconds())
    } else {
        (false, delta.num_seconds())
    };
    let (days, hours, minutes) = (secs / 86_400, (secs % 86_400) / 3600, (secs % 3600) / 60);
    let span = if days > 0 {
        format!("{days} d {hours} h")
    } else if hours > 0 {
        format!("{hours} h {minutes} min")
    } else {
        format!("{minutes} min")
    };
    if past {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// A timestamp to the minute, UTC.
pub fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn countdowns_read_as_time_left_or_past() {
        let now = Utc::now();
        assert_eq!(countdown(now + Duration::hours(50), now), "in 2 d 2 h");
        assert_eq!(
            countdown(now - Duration::minutes(90), now),
            "1 h 30 min ago"
        );
    }
}
