//! The privacy center's mail: SMTP through lettre. A recipient's address is used to send and
//! nowhere else: errors and logs name the mail's purpose, never the address.

use std::sync::Arc;

use anyhow::Context as _;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use secrecy::ExposeSecret as _;

use crate::settings::{SmtpSecurity, SmtpSettings};

/// Sends mail, or says it cannot (no `[api.smtp]`).
#[derive(Clone)]
pub struct Mailer {
    inner: Option<Arc<(AsyncSmtpTransport<Tokio1Executor>, Mailbox)>>,
}

impl Mailer {
    /// A mailer for `settings` (`None`: mail is not configured).
    pub fn new(settings: Option<&SmtpSettings>) -> anyhow::Result<Self> {
        let Some(smtp) = settings else {
            return Ok(Self { inner: None });
        };
        let builder = match smtp.security {
            SmtpSecurity::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
            }
            SmtpSecurity::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
                    .context("api.smtp.host: not a host name for TLS")?
            }
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)
                .context("api.smtp.host: not a host name for TLS")?,
        };
        let mut builder = builder.port(smtp.port).timeout(Some(smtp.timeout));
        if let (Some(user), Some(password)) = (&smtp.username, &smtp.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            ));
        }
        let from: Mailbox = smtp
            .from
            .parse()
            .context("api.smtp.from: not a mailbox such as `Privacy <privacy@example.com>`")?;
        Ok(Self {
            inner: Some(Arc::new((builder.build(), from))),
        })
    }

    /// Sends a plain-text mail. The error never contains the address.
    pub async fn send(&self, to: &str, subject: &str, body: String) -> anyhow::Result<()> {
        let Some(inner) = &self.inner else {
            anyhow::bail!("no [api.smtp] is configured, so no mail can be sent");
        };
        let (transport, from) = &**inner;
        let to: Mailbox = to
            .parse()
            .map_err(|_| anyhow::anyhow!("the recipient is not a valid address"))?;
        let message = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|_| anyhow::anyhow!("cannot build the {subject:?} mail"))?;
        transport
            .send(message)
            .await
            .map_err(|error| anyhow::anyhow!("SMTP delivery failed: {}", smtp_reason(&error)))?;
        Ok(())
    }
}

/// What went wrong, without the transport's message (a server may echo the recipient).
fn smtp_reason(error: &lettre::transport::smtp::Error) -> &'static str {
    if error.is_timeout() {
        "timed out"
    } else if error.is_permanent() {
        "permanent rejection"
    } else if error.is_transient() {
        "transient rejection"
    } else {
        "connection or protocol error"
    }
}
