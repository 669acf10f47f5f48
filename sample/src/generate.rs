//! The generator: every record of subject `i` as a pure function of `(seed, i)`.
//!
//! Each part of a subject (profile, accounts, chat, sessions, files, each attachment's bytes)
//! draws from its own random stream, so a store's seeder generates only what it writes and
//! the other parts never shift. Record ids are derived from the subject index (`user_id = i`,
//! invoice ids `8 i + j`, ...), so ids are stable too and never collide between subjects.

use chrono::{DateTime, SubsecRound as _, TimeDelta, Utc};
use serde::Serialize;

use crate::counts::Counts;
use crate::png;
use crate::rng::Rng;
use crate::vocab::{self, PLACES, Place};

/// Largest number of subjects a data set may have (phone numbers stay unique up to 10^9;
/// the limit keeps every derived id far from `i64::MAX`).
pub const MAX_SUBJECTS: u64 = 100_000_000;

/// The default anchor, 2025-01-01T00:00:00Z: every generated timestamp lies before it.
pub const DEFAULT_ANCHOR_UNIX: i64 = 1_735_689_600;

/// The default anchor as a timestamp (see [`DEFAULT_ANCHOR_UNIX`]).
pub fn default_anchor() -> DateTime<Utc> {
    DateTime::UNIX_EPOCH + TimeDelta::seconds(DEFAULT_ANCHOR_UNIX)
}

const DAY: i64 = 86_400;

// Random streams, one per part of a subject. Changing a number changes the data sets.
const STREAM_PROFILE: u64 = 1;
const STREAM_ACCOUNTS: u64 = 2;
const STREAM_CHAT: u64 = 3;
const STREAM_SESSIONS: u64 = 4;
const STREAM_FILES: u64 = 5;
const STREAM_PHONE_KEY: u64 = 6;
const STREAM_AVATAR: u64 = 0x100;
const STREAM_ATTACHMENT: u64 = 0x200;

/// The identities of one subject, as a data-subject request names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identities {
    /// Email address, unique: `first.last.i@example.{com,org,net}`.
    pub email: String,
    /// Phone number in E.164 form under the spare country code +999, unique per subject.
    pub phone: String,
    /// The application's user id, equal to the subject index.
    pub user_id: i64,
}

impl Identities {
    /// One JSON object with the identities as strings, keys sorted:
    /// `{"email":"…","phone":"…","user_id":"7"}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "email": self.email,
            "phone": self.phone,
            "user_id": self.user_id.to_string(),
        })
        .to_string()
    }
}

impl Serialize for Identities {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("email", &self.email)?;
        map.serialize_entry("phone", &self.phone)?;
        map.serialize_entry("user_id", &self.user_id.to_string())?;
        map.end()
    }
}

/// A row of `accounts.users` (the `restricted` and `objected` flags keep their default, false).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Primary key, the subject index.
    pub id: i64,
    /// Unique email address.
    pub email: String,
    /// E.164 phone number.
    pub phone: String,
    /// Given name (may contain non-ASCII letters).
    pub first_name: String,
    /// Family name (may contain spaces, hyphens, apostrophes, non-ASCII letters).
    pub last_name: String,
    /// Employer, for about seven subjects in ten.
    pub company: Option<String>,
    /// Object key of the avatar in the files store (without the store's key prefix).
    pub avatar_key: Option<String>,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
    /// Sign-up time.
    pub created_at: DateTime<Utc>,
}

/// A row of `accounts.invoices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    /// Primary key, `8 * user_id + n`.
    pub id: i64,
    /// The customer (nullable in the schema: the link is cut when the user is deleted).
    pub user_id: i64,
    /// Name on the invoice.
    pub billing_name: String,
    /// Postal address on the invoice.
    pub billing_address: String,
    /// ISO country code of the billing address.
    pub country: String,
    /// Amount in euro cents.
    pub amount_cents: i64,
    /// Issue time.
    pub issued_at: DateTime<Utc>,
}

/// A row of `accounts.access_log`, the application's system log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogEntry {
    /// Primary key, `32 * user_id + n`.
    pub id: i64,
    /// The signed-in user.
    pub user_id: i64,
    /// Client IP address (documentation ranges only).
    pub ip: String,
    /// Browser user agent.
    pub user_agent: String,
    /// Application page.
    pub page: String,
    /// Referring URL, for about two rows in three.
    pub referrer: Option<String>,
    /// Geolocated country.
    pub country: String,
    /// Geolocated city.
    pub city: String,
    /// Time of the request.
    pub at: DateTime<Utc>,
}

/// A row of `chat.conversations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Primary key, `8 * user_id + n`.
    pub id: i64,
    /// The end user who opened the conversation.
    pub user_id: i64,
    /// Subject line.
    pub subject: String,
    /// Time of the first message.
    pub started_at: DateTime<Utc>,
}

/// A row of `chat.messages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Primary key, `16 * conversation_id + n`.
    pub id: i64,
    /// The conversation.
    pub conversation_id: i64,
    /// The subject's user id for their own messages, `None` for support agents' replies
    /// (which belong to the conversation and go with it).
    pub author_id: Option<i64>,
    /// Free text; about one message in ten repeats the author's email or phone number.
    pub body: String,
    /// Time sent.
    pub sent_at: DateTime<Utc>,
}

/// A row of `chat.visits`: a page view on a customer's website.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visit {
    /// Primary key, `16 * user_id + n`.
    pub id: i64,
    /// The visitor.
    pub user_id: i64,
    /// URL of the page.
    pub page: String,
    /// Client IP address (documentation ranges only).
    pub ip: String,
    /// Screen resolution.
    pub screen: String,
    /// Operating system.
    pub os: String,
    /// Browser.
    pub browser: String,
    /// Device type: desktop, mobile or tablet.
    pub device: String,
    /// Time of the visit.
    pub at: DateTime<Utc>,
}

/// The Redis hash `session:{user_id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Session token, 32 hex digits.
    pub token: String,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Client IP address.
    pub ip: String,
}

/// What an object of the files store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `avatars/{user_id}/avatar.png`.
    Avatar,
    /// `attachments/{user_id}/{n}.{ext}`.
    Attachment,
}

/// An object of the files store. Its bytes are generated on demand by [`FileObject::content`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileObject {
    /// Object key, without the store's key prefix.
    pub key: String,
    /// Avatar or attachment.
    pub kind: FileKind,
    /// MIME type.
    pub content_type: &'static str,
    /// Size in bytes.
    pub size: u64,
    recipe: Recipe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Recipe {
    Avatar {
        seed: u64,
        index: u64,
    },
    Text {
        seed: u64,
        index: u64,
        n: u64,
        ext: &'static str,
    },
}

impl FileObject {
    /// The object's bytes: a small PNG identicon for avatars, text for attachments.
    pub fn content(&self) -> Vec<u8> {
        match self.recipe {
            Recipe::Avatar { seed, index } => {
                png::identicon(&mut Rng::new(seed, index, STREAM_AVATAR))
            }
            Recipe::Text {
                seed,
                index,
                n,
                ext,
            } => text_file(
                &mut Rng::new(seed, index, STREAM_ATTACHMENT + n),
                ext,
                self.size,
            ),
        }
    }
}

/// Everything the sample stores hold about one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The subject's index, 1-based.
    pub index: u64,
    /// The identities a request would name.
    pub identities: Identities,
    /// `accounts.users`.
    pub user: User,
    /// `accounts.invoices` (zero to four).
    pub invoices: Vec<Invoice>,
    /// `accounts.access_log` (two to sixteen).
    pub access_log: Vec<AccessLogEntry>,
    /// `chat.conversations` (zero to three).
    pub conversations: Vec<Conversation>,
    /// `chat.messages` of those conversations, the subject's and the agents' replies.
    pub messages: Vec<Message>,
    /// `chat.visits` (one to twelve).
    pub visits: Vec<Visit>,
    /// Redis `session:{user_id}`, for about three subjects in four.
    pub session: Option<Session>,
    /// Redis `last_seen:{email}`.
    pub last_seen: DateTime<Utc>,
    /// Redis list `visits:{user_id}` (one to ten pages).
    pub page_visits: Vec<String>,
    /// Objects of the files store: an avatar for about four subjects in five, and zero to
    /// three attachments.
    pub files: Vec<FileObject>,
}

impl Subject {
    /// How many records of each collection this subject has; summed over all subjects this is
    /// what the stores hold. `chat.messages` counts the agents' replies in the subject's
    /// conversations too: [`Subject::own_messages`] gives those the data map's
    /// `author_id` match finds.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::zero();
        c.add("accounts", "users", 1);
        c.add("accounts", "invoices", self.invoices.len() as u64);
        c.add("accounts", "access_log", self.access_log.len() as u64);
        c.add("chat", "conversations", self.conversations.len() as u64);
        c.add("chat", "messages", self.messages.len() as u64);
        c.add("chat", "visits", self.visits.len() as u64);
        c.add("sessions", "session", u64::from(self.session.is_some()));
        c.add("sessions", "last_seen", 1);
        c.add("sessions", "visits", 1);
        for f in &self.files {
            match f.kind {
                FileKind::Avatar => c.add("files", "avatars", 1),
                FileKind::Attachment => c.add("files", "attachments", 1),
            }
        }
        c
    }

    /// The messages the subject wrote (`author_id = user_id`).
    pub fn own_messages(&self) -> impl Iterator<Item = &Message> {
        self.messages
            .iter()
            .filter(move |m| m.author_id == Some(self.user.id))
    }

    /// The subject's Redis keys, without the key prefix.
    pub fn redis_keys(&self) -> Vec<String> {
        let mut keys = Vec::with_capacity(3);
        if self.session.is_some() {
            keys.push(format!("session:{}", self.user.id));
        }
        keys.push(format!("last_seen:{}", self.identities.email));
        keys.push(format!("visits:{}", self.user.id));
        keys
    }
}

/// Options of the generator: the seed, the time the data ends at and attachment sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generator {
    seed: u64,
    anchor: DateTime<Utc>,
    attachment_bytes: Option<u64>,
    phone_mul: u64,
    phone_add: u64,
}

impl Generator {
    /// A generator for `seed`, with the default anchor and attachment sizes.
    pub fn new(seed: u64) -> Self {
        let mut r = Rng::new(seed, 0, STREAM_PHONE_KEY);
        // An affine map i -> (a i + b) mod 10^9 with a coprime to 10^9 is a bijection, so
        // phone numbers are unique for up to 10^9 subjects and still depend on the seed.
        let mut a = (r.next_u64() % PHONE_SPACE) | 1;
        if a.is_multiple_of(5) {
            a = (a + 2) % PHONE_SPACE;
        }
        Self {
            seed,
            anchor: default_anchor(),
            attachment_bytes: None,
            phone_mul: a,
            phone_add: r.next_u64() % PHONE_SPACE,
        }
    }

    /// Every timestamp lies within about three years before `anchor` (seconds precision).
    /// Counts, ids and identities do not depend on it.
    pub fn with_anchor(mut self, anchor: DateTime<Utc>) -> Self {
        self.anchor = anchor.trunc_subsecs(0);
        self
    }

    /// Every attachment has exactly `bytes` bytes instead of a size between 64 B and 8 KiB.
    /// Counts and keys do not depend on it.
    pub fn with_attachment_bytes(mut self, bytes: Option<u64>) -> Self {
        self.attachment_bytes = bytes;
        self
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The anchor.
    pub fn anchor(&self) -> DateTime<Utc> {
        self.anchor
    }

    /// The identities of subject `index` (cheap: generates only the profile).
    pub fn identities(&self, index: u64) -> Identities {
        self.profile(index).identities
    }

    /// Everything about subject `index`.
    pub fn subject(&self, index: u64) -> Subject {
        let p = self.profile(index);
        let accounts = self.accounts(&p);
        let chat = self.chat(&p);
        let sessions = self.sessions(&p);
        let files = self.files(&p);
        Subject {
            index,
            identities: p.identities,
            user: accounts.user,
            invoices: accounts.invoices,
            access_log: accounts.access_log,
            conversations: chat.conversations,
            messages: chat.messages,
            visits: chat.visits,
            session: sessions.session,
            last_seen: sessions.last_seen,
            page_visits: sessions.page_visits,
            files,
        }
    }

    /// What the stores hold once subjects `1..=subjects` are seeded.
    pub fn expected_counts(&self, subjects: u64) -> Counts {
        let mut total = Counts::zero();
        for i in 1..=subjects {
            total.merge(&self.subject(i).counts());
        }
        total
    }

    pub(crate) fn profile(&self, index: u64) -> Profile {
        let mut r = Rng::new(self.seed, index, STREAM_PROFILE);
        let (first, first_slug) = *r.pick(vocab::FIRST_NAMES);
        let (last, last_slug) = *r.pick(vocab::LAST_NAMES);
        let domain = r.pick(vocab::EMAIL_DOMAINS);
        let place = r.pick(PLACES);
        let company = r.percent(70).then(|| r.pick(vocab::COMPANIES).to_string());
        let created_at =
            self.anchor - TimeDelta::seconds(r.range(30 * DAY as u64, 1095 * DAY as u64) as i64);
        let has_avatar = r.percent(80);
        let ip = random_ip(&mut r);
        let device = r.below(vocab::DEVICES.len() as u64) as usize;
        let user_agent = r.below(vocab::USER_AGENTS.len() as u64) as usize;
        let user_id = index as i64;
        let phone = (u128::from(self.phone_mul) * u128::from(index) + u128::from(self.phone_add))
            % u128::from(PHONE_SPACE);
        Profile {
            identities: Identities {
                email: format!("{first_slug}.{last_slug}.{index}@{domain}"),
                phone: format!("+999{phone:09}"),
                user_id,
            },
            index,
            first,
            last,
            place,
            company,
            created_at,
            has_avatar,
            ip,
            device,
            user_agent,
        }
    }

    /// Start of the window in which events happen: sign-up, but at most two years back, so
    /// that about half of the log rows are older than a year.
    fn window(&self, p: &Profile) -> (DateTime<Utc>, i64) {
        let start = p.created_at.max(self.anchor - TimeDelta::days(730));
        (start, (self.anchor - start).num_seconds().max(1))
    }

    fn at(&self, r: &mut Rng, p: &Profile) -> DateTime<Utc> {
        let (start, span) = self.window(p);
        start + TimeDelta::seconds(r.below(span as u64) as i64)
    }

    pub(crate) fn accounts(&self, p: &Profile) -> AccountsPart {
        let mut r = Rng::new(self.seed, p.index, STREAM_ACCOUNTS);
        let id = p.identities.user_id;
        let user = User {
            id,
            email: p.identities.email.clone(),
            phone: p.identities.phone.clone(),
            first_name: p.first.to_string(),
            last_name: p.last.to_string(),
            company: p.company.clone(),
            avatar_key: p.has_avatar.then(|| avatar_key(id)),
            country: p.place.country.to_string(),
            created_at: p.created_at,
        };
        let invoices_n = r.range(0, 4);
        let mut invoices = Vec::with_capacity(invoices_n as usize);
        let address = format!(
            "{} {}, {}{:02} {}",
            r.range(1, 240),
            r.pick(p.place.streets),
            p.place.postcode,
            r.below(100),
            p.place.city
        );
        for n in 0..invoices_n {
            let billing_name = match (&p.company, r.percent(50)) {
                (Some(company), true) => format!("{company} (attn. {} {})", p.first, p.last),
                _ => format!("{} {}", p.first, p.last),
            };
            invoices.push(Invoice {
                id: 8 * id + n as i64,
                user_id: id,
                billing_name,
                billing_address: address.clone(),
                country: p.place.country.to_string(),
                amount_cents: *r.pick(&[900, 1_900, 4_900, 9_900, 19_900]),
                issued_at: self.at(&mut r, p),
            });
        }
        invoices.sort_by_key(|i| (i.issued_at, i.id));
        renumber(&mut invoices, |inv, n| inv.id = 8 * id + n);

        let log_n = r.range(2, 16);
        let mut access_log = Vec::with_capacity(log_n as usize);
        for n in 0..log_n {
            let (country, city, ip) = if r.percent(85) {
                (p.place.country, p.place.city, p.ip.clone())
            } else {
                let place = r.pick(PLACES);
                (place.country, place.city, random_ip(&mut r))
            };
            let user_agent = if r.percent(80) {
                vocab::USER_AGENTS[p.user_agent]
            } else {
                r.pick(vocab::USER_AGENTS)
            };
            let page = r.pick(vocab::APP_PAGES);
            let referrer = r.percent(66).then(|| r.pick(vocab::REFERRERS).to_string());
            access_log.push(AccessLogEntry {
                id: 32 * id + n as i64,
                user_id: id,
                ip,
                user_agent: user_agent.to_string(),
                page: page.to_string(),
                referrer,
                country: country.to_string(),
                city: city.to_string(),
                at: self.at(&mut r, p),
            });
        }
        access_log.sort_by_key(|e| (e.at, e.id));
        renumber(&mut access_log, |e, n| e.id = 32 * id + n);
        AccountsPart {
            user,
            invoices,
            access_log,
        }
    }

    pub(crate) fn chat(&self, p: &Profile) -> ChatPart {
        let mut r = Rng::new(self.seed, p.index, STREAM_CHAT);
        let id = p.identities.user_id;
        let conversations_n = r.range(0, 3);
        let mut conversations = Vec::with_capacity(conversations_n as usize);
        let mut messages = Vec::new();
        for c in 0..conversations_n {
            let conversation = Conversation {
                id: 8 * id + c as i64,
                user_id: id,
                subject: r.pick(vocab::CONVERSATION_SUBJECTS).to_string(),
                // Early enough for all its messages (at most 7 x 4 h apart) to precede the anchor.
                started_at: self.at(&mut r, p).min(self.anchor - TimeDelta::days(2)),
            };
            let mut sent_at = conversation.started_at;
            for m in 0..r.range(1, 8) {
                let own = m % 2 == 0;
                let body = if own {
                    let mut body = String::new();
                    for s in 0..r.range(1, 3) {
                        if s > 0 {
                            body.push(' ');
                        }
                        body.push_str(r.pick::<&str>(vocab::SENTENCES));
                    }
                    if r.percent(10) {
                        if r.percent(50) {
                            body.push_str(&format!(" You can reach me on {}.", p.identities.phone));
                        } else {
                            body.push_str(&format!(" Please write to {}.", p.identities.email));
                        }
                    }
                    body
                } else {
                    format!("{} (Support team)", r.pick(vocab::REPLIES))
                };
                messages.push(Message {
                    id: 16 * conversation.id + m as i64,
                    conversation_id: conversation.id,
                    author_id: own.then_some(id),
                    body,
                    sent_at,
                });
                sent_at += TimeDelta::seconds(r.range(30, 4 * 3600) as i64);
            }
            conversations.push(conversation);
        }

        let (os, browser, device, screen) = vocab::DEVICES[p.device];
        let visits_n = r.range(1, 12);
        let mut visits = Vec::with_capacity(visits_n as usize);
        for n in 0..visits_n {
            let ip = if r.percent(90) {
                p.ip.clone()
            } else {
                random_ip(&mut r)
            };
            visits.push(Visit {
                id: 16 * id + n as i64,
                user_id: id,
                page: r.pick(vocab::SITE_PAGES).to_string(),
                ip,
                screen: screen.to_string(),
                os: os.to_string(),
                browser: browser.to_string(),
                device: device.to_string(),
                at: self.at(&mut r, p),
            });
        }
        visits.sort_by_key(|v| (v.at, v.id));
        renumber(&mut visits, |v, n| v.id = 16 * id + n);
        ChatPart {
            conversations,
            messages,
            visits,
        }
    }

    pub(crate) fn sessions(&self, p: &Profile) -> SessionsPart {
        let mut r = Rng::new(self.seed, p.index, STREAM_SESSIONS);
        let session = r.percent(75).then(|| Session {
            token: format!("{:016x}{:016x}", r.next_u64(), r.next_u64()),
            created: self.anchor - TimeDelta::seconds(r.range(60, 14 * DAY as u64) as i64),
            ip: p.ip.clone(),
        });
        let last_seen = self.anchor - TimeDelta::seconds(r.range(60, 30 * DAY as u64) as i64);
        let page_visits = (0..r.range(1, 10))
            .map(|_| r.pick(vocab::SITE_PAGES).to_string())
            .collect();
        SessionsPart {
            session,
            last_seen,
            page_visits,
        }
    }

    pub(crate) fn files(&self, p: &Profile) -> Vec<FileObject> {
        let mut r = Rng::new(self.seed, p.index, STREAM_FILES);
        let id = p.identities.user_id;
        let mut files = Vec::with_capacity(4);
        if p.has_avatar {
            files.push(FileObject {
                key: avatar_key(id),
                kind: FileKind::Avatar,
                content_type: "image/png",
                size: png::IDENTICON_LEN as u64,
                recipe: Recipe::Avatar {
                    seed: self.seed,
                    index: p.index,
                },
            });
        }
        for n in 1..=r.range(0, 3) {
            let (ext, content_type) = *r.pick(&[
                ("txt", "text/plain; charset=utf-8"),
                ("csv", "text/csv; charset=utf-8"),
                ("md", "text/markdown; charset=utf-8"),
            ]);
            // Drawn even when overridden, so the override changes nothing else.
            let size = r.range(64, 8192);
            files.push(FileObject {
                key: format!("attachments/{id}/{n}.{ext}"),
                kind: FileKind::Attachment,
                content_type,
                size: self.attachment_bytes.unwrap_or(size),
                recipe: Recipe::Text {
                    seed: self.seed,
                    index: p.index,
                    n,
                    ext,
                },
            });
        }
        files
    }
}

/// The phone numbers' space: nine digits after +999.
const PHONE_SPACE: u64 = 1_000_000_000;

/// The generator-internal part shared by every store: identities and profile.
pub(crate) struct Profile {
    pub(crate) identities: Identities,
    pub(crate) index: u64,
    first: &'static str,
    last: &'static str,
    place: &'static Place,
    company: Option<String>,
    created_at: DateTime<Utc>,
    has_avatar: bool,
    ip: String,
    device: usize,
    user_agent: usize,
}

/// The accounts store's records of one subject.
pub(crate) struct AccountsPart {
    pub(crate) user: User,
    pub(crate) invoices: Vec<Invoice>,
    pub(crate) access_log: Vec<AccessLogEntry>,
}

/// The chat store's records of one subject.
pub(crate) struct ChatPart {
    pub(crate) conversations: Vec<Conversation>,
    pub(crate) messages: Vec<Message>,
    pub(crate) visits: Vec<Visit>,
}

/// The sessions store's values of one subject.
pub(crate) struct SessionsPart {
    pub(crate) session: Option<Session>,
    pub(crate) last_seen: DateTime<Utc>,
    pub(crate) page_visits: Vec<String>,
}

/// Everything about subject `index` under `seed`, with the default anchor and sizes.
pub fn subject(seed: u64, index: u64) -> Subject {
    Generator::new(seed).subject(index)
}

/// What the stores hold once subjects `1..=subjects` are seeded with `seed`.
pub fn expected_counts(subjects: u64, seed: u64) -> Counts {
    Generator::new(seed).expected_counts(subjects)
}

fn avatar_key(user_id: i64) -> String {
    format!("avatars/{user_id}/avatar.png")
}

/// After sorting records by time, give them ids in time order again.
fn renumber<T>(items: &mut [T], mut set: impl FnMut(&mut T, i64)) {
    for (n, item) in items.iter_mut().enumerate() {
        set(item, n as i64);
    }
}

/// An address from the documentation ranges: 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24
/// (RFC 5737) and 2001:db8::/32 (RFC 3849).
fn random_ip(r: &mut Rng) -> String {
    match r.below(4) {
        0 => format!("192.0.2.{}", r.range(1, 254)),
        1 => format!("198.51.100.{}", r.range(1, 254)),
        2 => format!("203.0.113.{}", r.range(1, 254)),
        _ => format!(
            "2001:db8:{:x}:{:x}::{:x}",
            r.below(0x1_0000),
            r.below(0x1_0000),
            r.range(1, 0xffff)
        ),
    }
}

/// A text attachment of exactly `size` bytes (cut at a byte boundary that stays valid UTF-8:
/// the filler is ASCII).
fn text_file(r: &mut Rng, ext: &str, size: u64) -> Vec<u8> {
    let size = size as usize;
    let mut out = String::with_capacity(size + 128);
    match ext {
        "csv" => {
            out.push_str("date,item,quantity,amount_eur\n");
            while out.len() < size {
                out.push_str(&format!(
                    "2024-{:02}-{:02},{},{},{}.{:02}\n",
                    r.range(1, 12),
                    r.range(1, 28),
                    r.pick(&["seat", "addon", "support", "storage", "widget"]),
                    r.range(1, 20),
                    r.range(1, 500),
                    r.below(100)
                ));
            }
        }
        "md" => {
            out.push_str("# Notes\n\n");
            while out.len() < size {
                out.push_str("- ");
                out.push_str(ascii_sentence(r));
                out.push('\n');
            }
        }
        _ => {
            while out.len() < size {
                out.push_str(ascii_sentence(r));
                out.push(if r.percent(20) { '\n' } else { ' ' });
            }
        }
    }
    let mut bytes = out.into_bytes();
    bytes.truncate(size);
    bytes
}

fn ascii_sentence(r: &mut Rng) -> &'static str {
    // SENTENCES and REPLIES are ASCII, so truncating anywhere keeps valid UTF-8.
    if r.percent(75) {
        r.pick::<&str>(vocab::SENTENCES)
    } else {
        r.pick::<&str>(vocab::REPLIES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_is_a_pure_function_of_seed_and_index() {
        assert_eq!(subject(3, 7), subject(3, 7));
        assert_ne!(subject(3, 7), subject(4, 7));
        let s = subject(3, 7);
        assert_eq!(s.user.id, 7);
        assert_eq!(s.identities.user_id, 7);
        for f in &s.files {
            assert_eq!(f.content(), f.content());
            assert_eq!(f.content().len() as u64, f.size);
        }
    }

    #[test]
    fn identities_of_a_seed_never_change() {
        // Pinned: scripts and documentation quote these; a change here changes every data set.
        assert_eq!(Generator::new(1).identities(7).to_json(), PINNED_SUBJECT_7);
    }

    const PINNED_SUBJECT_7: &str =
        r#"{"email":"frances.gauss.7@example.org","phone":"+999544286603","user_id":"7"}"#;

    #[test]
    fn identities_are_unique_and_clearly_fake() {
        let g = Generator::new(11);
        let mut emails = std::collections::HashSet::new();
        let mut phones = std::collections::HashSet::new();
        for i in 1..=5_000 {
            let id = g.identities(i);
            assert!(
                id.email.ends_with("@example.com")
                    || id.email.ends_with("@example.org")
                    || id.email.ends_with("@example.net")
            );
            assert!(id.email.is_ascii());
            assert!(id.phone.starts_with("+999") && id.phone.len() == 13);
            assert!(emails.insert(id.email));
            assert!(phones.insert(id.phone));
        }
    }

    #[test]
    fn the_anchor_and_attachment_size_change_no_count_or_key() {
        let a = Generator::new(5);
        let b = Generator::new(5)
            .with_anchor(default_anchor() + TimeDelta::days(400))
            .with_attachment_bytes(Some(1 << 20));
        for i in 1..=50 {
            let (sa, sb) = (a.subject(i), b.subject(i));
            assert_eq!(sa.counts(), sb.counts());
            assert_eq!(sa.identities, sb.identities);
            let keys = |s: &Subject| s.files.iter().map(|f| f.key.clone()).collect::<Vec<_>>();
            assert_eq!(keys(&sa), keys(&sb));
            assert!(
                sb.files
                    .iter()
                    .filter(|f| f.kind == FileKind::Attachment)
                    .all(|f| f.size == 1 << 20)
            );
        }
    }

    #[test]
    fn timestamps_lie_before_the_anchor_and_logs_span_both_sides_of_a_year() {
        let g = Generator::new(1);
        let year_ago = g.anchor() - TimeDelta::days(365);
        let (mut old, mut recent) = (0, 0);
        for i in 1..=200 {
            let s = g.subject(i);
            let times = s
                .invoices
                .iter()
                .map(|x| x.issued_at)
                .chain(s.messages.iter().map(|x| x.sent_at))
                .chain(s.visits.iter().map(|x| x.at))
                .chain(s.session.iter().map(|x| x.created))
                .chain([s.user.created_at, s.last_seen]);
            for t in times {
                assert!(t < g.anchor());
            }
            for e in &s.access_log {
                assert!(e.at < g.anchor());
                if e.at < year_ago {
                    old += 1
                } else {
                    recent += 1
                }
            }
        }
        assert!(old > 100 && recent > 100, "old {old}, recent {recent}");
    }
}
