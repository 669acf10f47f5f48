//! Webhook delivery: the coordinator only writes a delivery row; this worker POSTs it with an
//! HMAC-SHA256 signature, retries with backoff, and records every attempt. A slow or dead
//! endpoint never holds up the coordinator.
//!
//! Signature header: `Lethe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
//! keyed with the tenant's webhook secret.
//!
//! Outbound URL policy: a tenant chooses where Lethe POSTs, so every URL is checked at filing
//! and again at each delivery ([`OutboundPolicy`]): `https` only (plain `http` where the
//! operator allows it for development), every address the host resolves to public (or
//! allow-listed), the connection made to exactly the addresses checked (no second DNS answer
//! in between), redirects never followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::PgPool;
use sqlx::types::Json;
use tokio_util::sync::CancellationToken;

/// How long resolving a webhook host may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an outbound URL is refused. The reasons never name the URL or its host: a tenant's
/// URL is the tenant's business, and error texts end up in logs and the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not an absolute URL with a host.
    #[error("not an absolute URL with a host")]
    Malformed,
    /// Neither `https` nor, where allowed, `http`.
    #[error("use an https URL")]
    Scheme,
    /// The host has no address.
    #[error("the URL's host does not resolve")]
    Unresolved,
    /// An address of the host is loopback, private, link-local or otherwise not public.
    #[error("the URL's host is not a public address (loopback, private, link-local, ...)")]
    NotPublic,
}

/// A URL that passed the policy, with the addresses to connect to.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The URL.
    pub url: url::Url,
    /// The host name, when the URL names one (not an IP literal).
    pub domain: Option<String>,
    /// Every address the host resolved to; all of them passed.
    pub addrs: Vec<SocketAddr>,
}

/// Where webhooks and callbacks may go: built once from `[api.outbound]`.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    allow_http: bool,
    hosts: Vec<(String, Option<u16>)>,
    nets: Vec<Net>,
}

impl OutboundPolicy {
    /// The policy `settings` describe; an entry of `allow_hosts` that is neither a host,
    /// `host:port` nor a CIDR is an error naming it.
    pub fn new(settings: &crate::settings::OutboundSettings) -> Result<Self, String> {
        let mut policy = Self {
            allow_http: settings.allow_http,
            ..Self::default()
        };
        for entry in &settings.allow_hosts {
            let entry = entry.trim();
            if entry.contains('/') {
                let net = Net::parse(entry)
                    .ok_or_else(|| format!("`{entry}` is not a CIDR network (e.g. 10.1.0.0/16)"))?;
                policy.nets.push(net);
                continue;
            }
            // `host:port`, `[v6]:port`, or a bare host or address.
            let parsed = url::Url::parse(&format!("http://{entry}/"))
                .ok()
                .filter(|u| u.host_str().is_some() && u.path() == "/" && u.username().is_empty());
            let Some(parsed) = parsed else {
                return Err(format!(
                    "`{entry}` is not a host, host:port or CIDR network"
                ));
            };
            let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
            let port = parsed.port().or_else(|| {
                // `host:80` parses with no port (80 is http's default): keep it explicit.
                entry
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse().ok())
                    .filter(|_| !entry.ends_with(']'))
            });
            policy.hosts.push((host, port));
        }
        Ok(policy)
    }

    /// Checks `url` without resolving it: scheme, host present. Cheap enough for validation.
    pub fn check_syntax(&self, url: &str) -> Result<url::Url, Refusal> {
        let parsed = url::Url::parse(url).map_err(|_| Refusal::Malformed)?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => return Err(Refusal::Scheme),
        }
        if parsed.host().is_none() || parsed.port_or_known_default().is_none() {
            return Err(Refusal::Malformed);
        }
        Ok(parsed)
    }

    /// Checks `url` fully: its syntax, then every address its host resolves to. Connect only
    /// to the returned addresses ([`Checked::client`]): resolving again could give others.
    pub async fn check(&self, url: &str) -> Result<Checked, Refusal> {
        let parsed = self.check_syntax(url)?;
        let port = parsed.port_or_known_default().ok_or(Refusal::Malformed)?;
        let host = parsed.host().ok_or(Refusal::Malformed)?;
        let (domain, allowed, ips) = match host {
            url::Host::Ipv4(ip) => {
                let allowed = self.host_allowed(&ip.to_string(), port);
                (None, allowed, vec![IpAddr::V4(ip)])
            }
            url::Host::Ipv6(ip) => {
                let allowed = self.host_allowed(&ip.to_string(), port)
                    || self.host_allowed(&format!("[{ip}]"), port);
                (None, allowed, vec![IpAddr::V6(ip)])
            }
            url::Host::Domain(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                let allowed = self.host_allowed(&name, port);
                // RFC 6761: `localhost` and its subdomains are loopback, whatever a resolver says.
                if !allowed && (name == "localhost" || name.ends_with(".localhost")) {
                    return Err(Refusal::NotPublic);
                }
                let found = tokio::time::timeout(
                    RESOLVE_TIMEOUT,
                    tokio::net::lookup_host((name.as_str(), port)),
                )
                .await
                .map_err(|_| Refusal::Unresolved)?
                .map_err(|_| Refusal::Unresolved)?;
                let ips: Vec<IpAddr> = found.map(|a| a.ip()).collect();
                (Some(name), allowed, ips)
            }
        };
        if ips.is_empty() {
            return Err(Refusal::Unresolved);
        }
        // Every address must pass: a client may connect to any of them.
        if !allowed
            && !ips
                .iter()
                .all(|ip| is_public(*ip) || self.nets.iter().any(|n| n.contains(*ip)))
        {
            return Err(Refusal::NotPublic);
        }
        let mut addrs: Vec<SocketAddr> = ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        addrs.dedup();
        Ok(Checked {
            url: parsed,
            domain,
            addrs,
        })
    }

    fn host_allowed(&self, host: &str, port: u16) -> bool {
        self.hosts
            .iter()
            .any(|(h, p)| h == host && p.is_none_or(|p| p == port))
    }
}

impl Checked {
    /// A client that connects to the checked addresses only and follows no redirect (a
    /// redirect would lead to a URL nobody checked). No proxy either: a proxy would resolve
    /// the host again.
    pub fn client(&self, timeout: Duration) -> reqwest::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if let Some(domain) = &self.domain {
            builder = builder.resolve_to_addrs(domain, &self.addrs);
        }
        builder.build()
    }
}

/// An IP network from `allow_hosts`.
#[derive(Debug, Clone, Copy)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = text.split_once('/')?;
        let addr: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => in_v4(ip, net, self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => in_v6(ip, net, self.prefix),
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// IPv4 ranges that are not the public internet (IANA special-purpose registry).
const NOT_PUBLIC_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network", unspecified
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // RFC 1918
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // CGNAT
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local (cloud metadata services)
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // RFC 1918
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // RFC 1918
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, broadcast
];

/// IPv6 ranges that are not the public internet, or that embed an IPv4 address which could be
/// any (NAT64, 6to4, Teredo): refused rather than decoded.
const NOT_PUBLIC_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96), // unspecified, loopback, IPv4-compatible
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96), // NAT64
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48), // local-use NAT64
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64), // discard
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF protocol assignments, Teredo
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16), // 6to4
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7), // unique local
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10), // site-local (deprecated)
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), // multicast
];

/// Whether `ip` is an address of the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => !NOT_PUBLIC_V4.iter().any(|(net, p)| in_v4(v4, *net, *p)),
        IpAddr::V6(v6) => !NOT_PUBLIC_V6.iter().any(|(net, p)| in_v6(v6, *net, *p)),
    }
}

/// What delivery needs: the policy and the endpoints' time to answer.
#[derive(Debug, Clone)]
pub struct Outbound {
    policy: Arc<OutboundPolicy>,
    timeout: Duration,
}

impl Outbound {
    /// Deliveries under `policy`, each endpoint given `timeout` to answer.
    pub fn new(policy: Arc<OutboundPolicy>, timeout: Duration) -> Self {
        Self { policy, timeout }
    }
}

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Lethe-Signature";
/// Attempts before a delivery is abandoned.
pub const MAX_ATTEMPTS: i32 = 12;

/// The signature header value for `body` sent at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Delay before attempt `attempts + 1`: 5 s doubling, at most an hour.
pub fn backoff(attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 10)).unwrap_or(0);
    Duration::from_secs((5u64 << exponent).min(3600))
}

#[derive(sqlx::FromRow)]
struct Due {
    id: i64,
    url: String,
    payload: Json<serde_json::Value>,
    attempts: i32,
    secret: Option<String>,
}

/// Delivers due webhooks until `shutdown`.
pub async fn run(pool: PgPool, outbound: Outbound, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        match deliver_due(&pool, &outbound).await {
            Ok(n) if n > 0 => continue,
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error, "cannot deliver webhooks; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {},
            () = shutdown.cancelled() => {},
        }
    }
}

/// Attempts every due delivery once; returns how many were attempted.
pub async fn deliver_due(pool: &PgPool, outbound: &Outbound) -> sqlx::Result<usize> {
    // Claim a batch by pushing its next attempt out: another process skips it meanwhile.
    let due: Vec<Due> = sqlx::query_as(
        "WITH claimed AS (
             SELECT id FROM webhook_delivery
             WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_attempt_at <= now()
             ORDER BY next_attempt_at LIMIT 16 FOR UPDATE SKIP LOCKED
         )
         UPDATE webhook_delivery d SET next_attempt_at = now() + interval '2 minutes'
         FROM claimed, tenant t
         WHERE d.id = claimed.id AND t.id = d.tenant_id
         RETURNING d.id, d.url, d.payload, d.attempts, t.webhook_secret AS secret",
    )
    .fetch_all(pool)
    .await?;
    let count = due.len();
    for delivery in due {
        let body = serde_json::to_vec(&delivery.payload.0).unwrap_or_default();
        let timestamp = Utc::now().timestamp();
        let signature = sign(delivery.secret.as_deref().unwrap_or(""), timestamp, &body);
        let attempt = delivery.attempts + 1;
        // Checked again at every attempt: the host's addresses may have changed since filing.
        let (status, error, refused) = match outbound.policy.check(&delivery.url).await {
            Err(refusal) => {
                tracing::warn!(delivery.id = delivery.id, reason = %refusal, "webhook refused by the outbound URL policy");
                (None, Some(format!("refused: {refusal}")), true)
            }
            Ok(checked) => {
                let outcome = match checked.client(outbound.timeout) {
                    Ok(client) => {
                        client
                            .post(checked.url)
                            .header(reqwest::header::CONTENT_TYPE, "application/json")
                            .header(SIGNATURE_HEADER, signature)
                            .body(body)
                            .send()
                            .await
                    }
                    Err(error) => Err(error),
                };
                match outcome {
                    Ok(response) => (Some(i32::from(response.status().as_u16())), None, false),
                    // Without the URL: the error would otherwise quote it.
                    Err(error) => (None, Some(error.without_url().to_string()), false),
                }
            }
        };
        let delivered = status.is_some_and(|s| (200..300).contains(&s));
        sqlx::query("INSERT INTO webhook_attempt (delivery_id, attempt, status, error) VALUES ($1, $2, $3, $4)")
            .bind(delivery.id)
            .bind(attempt)
            .bind(status)
            .bind(&error)
            .execute(pool)
            .await?;
        let next = chrono::Duration::from_std(backoff(attempt)).unwrap_or_default();
        // A refused URL is abandoned at once: retrying would only ask the policy again.
        let abandoned = !delivered && (refused || attempt >= MAX_ATTEMPTS);
        sqlx::query(
            "UPDATE webhook_delivery SET attempts = $2,
                 delivered_at = CASE WHEN $3 THEN now() END,
                 abandoned_at = CASE WHEN $4 THEN now() END,
                 next_attempt_at = now() + $5
             WHERE id = $1",
        )
        .bind(delivery.id)
        .bind(attempt)
        .bind(delivered)
        .bind(abandoned)
        .bind(next)
        .execute(pool)
        .await?;
        if delivered || abandoned {
            // Incident notifications are steps of the breach register: the chain records them.
            // The delivery itself is recorded either way; a lost audit event is logged.
            if let Err(error) =
                crate::incidents::delivery_settled(pool, delivery.id, delivered, attempt).await
            {
                tracing::warn!(delivery.id = delivery.id, error = %error, "cannot record the end of an incident notification");
            }
        }
        metrics::counter!("lethe_webhook_attempts_total", "outcome" => if delivered { "delivered" } else if refused { "refused" } else { "failed" }).increment(1);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_the_timestamp_and_body() {
        let a = sign("secret", 1_700_000_000, b"{}");
        assert!(a.starts_with("t=1700000000,v1="));
        assert_ne!(a, sign("secret", 1_700_000_001, b"{}"));
        assert_ne!(a, sign("other", 1_700_000_000, b"{}"));
        assert_eq!(backoff(0), Duration::from_secs(5));
        assert_eq!(backoff(20), Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;
    use crate::settings::OutboundSettings;

    fn policy(allow_http: bool, hosts: &[&str]) -> OutboundPolicy {
        OutboundPolicy::new(&OutboundSettings {
            allow_http,
            allow_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn only_public_addresses_are_public() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "192.0.2.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn non_public_hosts_and_plain_http_are_refused_without_connecting() {
        let strict = policy(false, &[]);
        assert_eq!(
            strict.check("http://93.184.216.34/").await.err(),
            Some(Refusal::Scheme)
        );
        for url in [
            "https://127.0.0.1/hook",
            "https://10.0.0.1/hook",
            "https://169.254.169.254/latest/meta-data/",
            "https://[::1]:8443/hook",
            "https://localhost/hook",
            "https://hooks.localhost/hook",
            "https://[::ffff:7f00:1]/hook",
        ] {
            assert_eq!(
                strict.check(url).await.err(),
                Some(Refusal::NotPublic),
                "{url}"
            );
        }
        assert_eq!(
            strict
                .check("https://93.184.216.34/")
                .await
                .unwrap()
                .addrs
                .len(),
            1
        );
        assert_eq!(
            strict.check("mailto:a@b.c").await.err(),
            Some(Refusal::Scheme)
        );
    }

    #[tokio::test]
    async fn allow_listed_hosts_and_networks_pass_and_only_on_their_port() {
        let dev = policy(true, &["127.0.0.1:8080", "10.1.0.0/16", "localhost"]);
        assert!(dev.check("http://127.0.0.1:8080/").await.is_ok());
        assert_eq!(
            dev.check("http://127.0.0.1:8081/").await.err(),
            Some(Refusal::NotPublic)
        );
        assert!(dev.check("https://10.1.2.3/").await.is_ok());
        assert_eq!(
            dev.check("https://10.2.0.1/").await.err(),
            Some(Refusal::NotPublic)
        );
        assert!(dev.check("http://localhost:9/").await.is_ok());
        assert!(
            OutboundPolicy::new(&OutboundSettings {
                allow_http: false,
                allow_hosts: vec!["10.0.0.0/40".into()],
            })
            .is_err()
        );
    }
}
