//! OpenPGP: the operators' certificates every backup and every tombstone is encrypted to
//! (`backups.recipients`), and the secret keys an operator brings to `verify` and `restore`.
//! Shared by the backup daemon (backups) and the api (tombstones, written by its coordinator):
//! both hold public certificates only.
//!
//! The backup host holds public certificates only. Each configured certificate must be valid
//! now under the standard policy, neither expired nor revoked, and have at least one usable
//! encryption key; otherwise the daemon refuses to start (and a running daemon refuses to
//! start a backup once one has expired), naming the file and the reason.
//!
//! The packet format is chosen, not inferred: sequoia writes SEIPDv2 (RFC 9580 AEAD) whenever
//! every recipient's certificate advertises it, which GnuPG 2.2 (Debian 12) cannot read. With
//! `backups.seipd = "v1"` (the default) every recipient is presented to the encryptor as
//! supporting SEIPDv1 only, so the data is SEIPDv1 with MDC and v3 PKESKs naming the key id,
//! whatever the certificates advertise.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use sequoia_openpgp as openpgp;

use openpgp::Cert;
use openpgp::KeyHandle;
use openpgp::cert::CertParser;
use openpgp::crypto::{KeyPair, Password, SessionKey};
use openpgp::packet::{PKESK, SKESK};
use openpgp::parse::Parse;
use openpgp::parse::stream::{
    DecryptionHelper, DecryptorBuilder, MessageStructure, VerificationHelper,
};
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Encryptor, LiteralWriter, Message, Recipient};
use openpgp::types::{AEADAlgorithm, Features, RevocationStatus, SymmetricAlgorithm};

use serde::Deserialize;

/// The OpenPGP packet that carries encrypted data (`backups.seipd`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SeipdVersion {
    /// SEIPDv1 (RFC 4880, with MDC): what GnuPG 2.2 and every other implementation reads.
    #[default]
    V1,
    /// SEIPDv2 (RFC 9580, AEAD): needs an RFC 9580 implementation (Sequoia's `sq`, for one) to
    /// decrypt; GnuPG 2.2 cannot.
    V2,
}

/// How long before a recipient certificate expires start-up warns about it.
const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// A recipient certificate that cannot be used, or none at all.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `backups.recipients` is empty.
    #[error(
        "no backup recipient is configured: set backups.recipients to the operators' public \
         OpenPGP certificates (gpg --export --armor KEY > ops.asc), or LETHE__BACKUPS__RECIPIENTS; \
         the backup daemon never encrypts to nobody"
    )]
    NoRecipients,
    /// A file cannot be read or parsed.
    #[error("backups.recipients[{index}] ({path}): {reason}")]
    Unusable {
        /// Position in the list.
        index: usize,
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
}

/// The operators' certificates, checked, and the packet format to write.
#[derive(Debug, Clone)]
pub struct Recipients {
    certs: Vec<(PathBuf, Cert)>,
    seipd: SeipdVersion,
}

impl Recipients {
    /// Reads and checks every configured certificate file (paths relative to `base_dir`).
    pub fn load(paths: &[PathBuf], base_dir: &Path, seipd: SeipdVersion) -> Result<Self, KeyError> {
        if paths.is_empty() {
            return Err(KeyError::NoRecipients);
        }
        let mut certs = Vec::new();
        for (index, path) in paths.iter().enumerate() {
            let path = base_dir.join(path);
            let unusable = |reason: String| KeyError::Unusable {
                index,
                path: path.clone(),
                reason,
            };
            let bytes = std::fs::read(&path).map_err(|e| unusable(format!("cannot read: {e}")))?;
            let parsed: Vec<Cert> = CertParser::from_bytes(&bytes)
                .map_err(|e| unusable(format!("not an OpenPGP certificate: {e}")))?
                .collect::<openpgp::Result<Vec<_>>>()
                .map_err(|e| unusable(format!("not an OpenPGP certificate: {e}")))?;
            if parsed.is_empty() {
                return Err(unusable("holds no OpenPGP certificate".into()));
            }
            for cert in parsed {
                check(&cert, SystemTime::now()).map_err(&unusable)?;
                // Still valid, but not for long: every backup then fails to start.
                let soon = SystemTime::now() + EXPIRY_WARNING;
                if let Err(reason) = check(&cert, soon) {
                    tracing::warn!(
                        recipient = %path.display(),
                        within_days = EXPIRY_WARNING.as_secs() / 86_400,
                        at_that_time = %reason,
                        "a backup recipient certificate becomes unusable soon; backups will then refuse to start"
                    );
                }
                certs.push((path.clone(), cert));
            }
        }
        Ok(Self { certs, seipd })
    }

    /// Checks again that every certificate is still valid (they expire while a daemon runs).
    pub fn check_now(&self) -> anyhow::Result<()> {
        for (path, cert) in &self.certs {
            check(cert, SystemTime::now()).map_err(|reason| {
                anyhow::anyhow!(
                    "backup recipient certificate in {}: {reason}",
                    path.display()
                )
            })?;
        }
        Ok(())
    }

    /// The certificates' fingerprints (upper-case hex), in configuration order.
    pub fn fingerprints(&self) -> Vec<String> {
        self.certs
            .iter()
            .map(|(_, cert)| cert.fingerprint().to_hex())
            .collect()
    }

    /// The packet format written.
    pub fn seipd(&self) -> SeipdVersion {
        self.seipd
    }

    /// Opens an OpenPGP message encrypted to every recipient, writing to `sink`, with one
    /// binary literal packet named `filename` inside: write the plaintext, then
    /// [`Message::finalize`].
    pub fn encrypt<'a, W>(&'a self, sink: W, filename: &str) -> anyhow::Result<Message<'a>>
    where
        W: Write + Send + Sync + 'a,
    {
        let policy: &'static StandardPolicy<'static> = &POLICY;
        let features = match self.seipd {
            SeipdVersion::V1 => Features::empty().set_seipdv1(),
            SeipdVersion::V2 => Features::empty().set_seipdv1().set_seipdv2(),
        };
        let mut recipients = Vec::new();
        for (path, cert) in &self.certs {
            let before = recipients.len();
            for key in cert
                .keys()
                .with_policy(policy, None)
                .supported()
                .alive()
                .revoked(false)
                .for_storage_encryption()
                .for_transport_encryption()
            {
                // v3 PKESKs (SEIPDv1) name the key by key id, v6 ones by fingerprint.
                let handle: KeyHandle = match self.seipd {
                    SeipdVersion::V1 => key.key().keyid().into(),
                    SeipdVersion::V2 => key.key().fingerprint().into(),
                };
                recipients.push(Recipient::new(features.clone(), handle, key.key()));
            }
            if recipients.len() == before {
                anyhow::bail!(
                    "backup recipient certificate in {} has no usable encryption key",
                    path.display()
                );
            }
        }
        let message = Message::new(sink);
        let mut encryptor = Encryptor::for_recipients(message, recipients)
            .symmetric_algo(SymmetricAlgorithm::AES256);
        if self.seipd == SeipdVersion::V2 {
            encryptor = encryptor.aead_algo(AEADAlgorithm::default());
        }
        let message = encryptor.build()?;
        let message = LiteralWriter::new(message)
            .filename(filename)?
            .date(SystemTime::now())?
            .build()?;
        Ok(message)
    }
}

/// Why `cert` cannot be encrypted to at `now`, if it cannot.
fn check(cert: &Cert, now: SystemTime) -> Result<(), String> {
    let fingerprint = cert.fingerprint().to_hex();
    if cert.is_tsk() {
        return Err(format!(
            "certificate {fingerprint} holds secret key material; the backup host must hold \
             public certificates only (export with gpg --export --armor, not --export-secret-keys)"
        ));
    }
    let policy = StandardPolicy::new();
    if let RevocationStatus::Revoked(_) = cert.revocation_status(&policy, now) {
        return Err(format!("certificate {fingerprint} is revoked"));
    }
    let valid = match cert.with_policy(&policy, now) {
        Ok(valid) => valid,
        Err(error) => {
            // An expired primary key makes the whole certificate invalid: say so plainly.
            if let Some(expired) = primary_expiry(cert).filter(|t| *t <= now) {
                return Err(format!(
                    "certificate {fingerprint} expired on {}",
                    rfc3339(expired)
                ));
            }
            return Err(format!(
                "certificate {fingerprint} is not valid under the standard policy: {error}"
            ));
        }
    };
    if let Err(error) = valid.alive() {
        return match valid.primary_key().key_expiration_time() {
            Some(expired) if expired <= now => Err(format!(
                "certificate {fingerprint} expired on {}",
                rfc3339(expired)
            )),
            _ => Err(format!("certificate {fingerprint} is not alive: {error}")),
        };
    }
    let mut usable = 0;
    let mut expired_subkeys = Vec::new();
    for key in valid
        .keys()
        .supported()
        .revoked(false)
        .for_storage_encryption()
        .for_transport_encryption()
    {
        match key.alive() {
            Ok(()) => usable += 1,
            Err(_) => {
                if let Some(t) = key.key_expiration_time() {
                    expired_subkeys.push(rfc3339(t));
                }
            }
        }
    }
    if usable == 0 {
        return Err(if expired_subkeys.is_empty() {
            format!("certificate {fingerprint} has no usable encryption key")
        } else {
            format!(
                "certificate {fingerprint} has no usable encryption key: its encryption key \
                 expired on {}",
                expired_subkeys.join(", ")
            )
        });
    }
    Ok(())
}

/// When the primary key expires, read from its newest self-signature without a policy (a
/// certificate that is no longer valid cannot be asked through one).
fn primary_expiry(cert: &Cert) -> Option<SystemTime> {
    let policy = StandardPolicy::new();
    let created = cert.primary_key().key().creation_time();
    // Evaluated just after creation, when the certificate was still alive.
    let valid = cert
        .with_policy(&policy, created + std::time::Duration::from_secs(1))
        .ok()?;
    valid.primary_key().key_expiration_time()
}

fn rfc3339(time: SystemTime) -> String {
    DateTime::<Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An operator's secret keys, for decrypting backups in `verify` and `restore`.
pub struct SecretKeys {
    pairs: Vec<(KeyHandle, KeyPair)>,
}

impl SecretKeys {
    /// Reads transferable secret keys (ASCII-armored or binary, as `gpg --export-secret-keys`
    /// writes them). Keys protected by a passphrase are unlocked with `passphrase`.
    pub fn load(path: &Path, passphrase: Option<&str>) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read the secret key {}: {e}", path.display()))?;
        let certs: Vec<Cert> = CertParser::from_bytes(&bytes)
            .and_then(|parser| parser.collect::<openpgp::Result<Vec<_>>>())
            .map_err(|e| anyhow::anyhow!("{} is not an OpenPGP secret key: {e}", path.display()))?;
        let mut pairs = Vec::new();
        let mut locked = 0;
        for cert in &certs {
            for key in cert.keys().secret() {
                let key = key.key().clone();
                let key = if key.has_unencrypted_secret() {
                    key
                } else {
                    match passphrase {
                        Some(p) => match key.decrypt_secret(&Password::from(p)) {
                            Ok(key) => key,
                            Err(_) => {
                                locked += 1;
                                continue;
                            }
                        },
                        None => {
                            locked += 1;
                            continue;
                        }
                    }
                };
                let handle = KeyHandle::from(key.fingerprint());
                if let Ok(pair) = key.into_keypair() {
                    pairs.push((handle, pair));
                }
            }
        }
        if pairs.is_empty() {
            if locked > 0 {
                anyhow::bail!(
                    "the secret keys in {} are protected by a passphrase: give it with \
                     --passphrase-file, or decrypt with --gpg (gpg-agent asks for it)",
                    path.display()
                );
            }
            anyhow::bail!("{} holds no secret key", path.display());
        }
        Ok(Self { pairs })
    }

    /// A reader of the plaintext of the OpenPGP message `ciphertext`: the data of its literal
    /// packet. Reading fails on a wrong key or on any modification of the ciphertext (the MDC
    /// or AEAD tag does not match); at most `buffer` bytes of plaintext are held back.
    pub fn decrypt<'a, R>(
        &'a mut self,
        ciphertext: R,
        buffer: usize,
    ) -> anyhow::Result<impl io::Read + 'a>
    where
        R: io::Read + Send + Sync + 'a,
    {
        let policy: &'static StandardPolicy<'static> = &POLICY;
        let helper = Helper { keys: self };
        let decryptor = DecryptorBuilder::from_reader(ciphertext)?
            .buffer_size(buffer)
            .with_policy(policy, None, helper)
            .map_err(|e| anyhow::anyhow!("cannot decrypt the backup: {e}"))?;
        Ok(decryptor)
    }
}

static POLICY: StandardPolicy<'static> = StandardPolicy::new();

struct Helper<'a> {
    keys: &'a mut SecretKeys,
}

impl VerificationHelper for Helper<'_> {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(Vec::new())
    }

    fn check(&mut self, _structure: MessageStructure) -> openpgp::Result<()> {
        // Backups are not signed (the backup host holds no secret key): integrity rests on the
        // MDC or AEAD tag, checked by the decryptor, and on the manifest's SHA-256.
        Ok(())
    }
}

impl DecryptionHelper for Helper<'_> {
    fn decrypt(
        &mut self,
        pkesks: &[PKESK],
        _skesks: &[SKESK],
        sym_algo: Option<SymmetricAlgorithm>,
        decrypt: &mut dyn FnMut(Option<SymmetricAlgorithm>, &SessionKey) -> bool,
    ) -> openpgp::Result<Option<Cert>> {
        let mut tried: HashMap<usize, ()> = HashMap::new();
        for pkesk in pkesks {
            for (i, (handle, pair)) in self.keys.pairs.iter_mut().enumerate() {
                let matches = match pkesk.recipient() {
                    Some(recipient) => recipient.aliases(&*handle),
                    // An anonymous recipient: try every key once.
                    None => tried.insert(i, ()).is_none(),
                };
                if !matches {
                    continue;
                }
                if let Some((algo, session_key)) = pkesk.decrypt(pair, sym_algo)
                    && decrypt(algo, &session_key)
                {
                    return Ok(None);
                }
            }
        }
        Err(anyhow::anyhow!(
            "none of the given secret keys can decrypt this backup (it is encrypted to {})",
            pkesks
                .iter()
                .filter_map(|p| p.recipient().map(|r| r.to_hex()))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    use openpgp::cert::{CertBuilder, Preferences as _};
    use openpgp::packet::SEIP;
    use openpgp::serialize::Serialize as _;
    use openpgp::{Packet, PacketPile};

    fn generate() -> Cert {
        CertBuilder::general_purpose(Some("Ops <ops@example.org>"))
            .generate()
            .unwrap()
            .0
    }

    fn write(dir: &Path, name: &str, cert: &Cert, secret: bool) -> PathBuf {
        let mut bytes = Vec::new();
        if secret {
            cert.as_tsk().serialize(&mut bytes).unwrap();
        } else {
            cert.serialize(&mut bytes).unwrap();
        }
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn encrypt(recipients: &Recipients, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut message = recipients.encrypt(&mut out, "test.bin").unwrap();
        message.write_all(plaintext).unwrap();
        message.finalize().unwrap();
        out
    }

    fn refusal(dir: &Path, cert: &Cert, secret: bool) -> String {
        let path = write(dir, "cert.pgp", cert, secret);
        Recipients::load(&[path], Path::new(""), SeipdVersion::V1)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn seipdv1_is_written_even_to_a_certificate_that_advertises_seipdv2_unless_v2_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let cert = generate();
        let valid = cert.with_policy(&POLICY, None).unwrap();
        assert!(valid.features().unwrap().supports_seipdv2());
        let public = write(dir.path(), "ops.pgp", &cert, false);
        let secret = write(dir.path(), "ops.key", &cert, true);
        for (seipd, v1) in [(SeipdVersion::V1, true), (SeipdVersion::V2, false)] {
            let recipients =
                Recipients::load(std::slice::from_ref(&public), Path::new(""), seipd).unwrap();
            let ciphertext = encrypt(&recipients, b"hello backup");
            let pile = PacketPile::from_bytes(&ciphertext).unwrap();
            let seip = pile
                .descendants()
                .find_map(|p| match p {
                    Packet::SEIP(seip) => Some(matches!(seip, SEIP::V1(_))),
                    _ => None,
                })
                .unwrap();
            assert_eq!(seip, v1, "{seipd:?}");

            let mut keys = SecretKeys::load(&secret, None).unwrap();
            let mut plaintext = Vec::new();
            keys.decrypt(ciphertext.as_slice(), 1 << 20)
                .unwrap()
                .read_to_end(&mut plaintext)
                .unwrap();
            assert_eq!(plaintext, b"hello backup");
        }
    }

    #[test]
    fn a_flipped_byte_of_the_ciphertext_makes_decryption_fail() {
        let dir = tempfile::tempdir().unwrap();
        let cert = generate();
        let public = write(dir.path(), "ops.pgp", &cert, false);
        let secret = write(dir.path(), "ops.key", &cert, true);
        let recipients = Recipients::load(&[public], Path::new(""), SeipdVersion::V1).unwrap();
        let plaintext: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let ciphertext = encrypt(&recipients, &plaintext);
        let mut keys = SecretKeys::load(&secret, None).unwrap();
        for at in [
            ciphertext.len() / 3,
            ciphertext.len() / 2,
            ciphertext.len() - 10,
        ] {
            let mut damaged = ciphertext.clone();
            damaged[at] ^= 1;
            let read = keys
                .decrypt(damaged.as_slice(), 1 << 20)
                .and_then(|mut r| Ok(std::io::copy(&mut r, &mut std::io::sink())?));
            assert!(read.is_err(), "a backup modified at byte {at} decrypted");
        }
    }

    #[test]
    fn missing_expired_revoked_secret_and_keyless_certificates_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let none = Recipients::load(&[], Path::new(""), SeipdVersion::V1).unwrap_err();
        assert!(matches!(none, KeyError::NoRecipients));
        assert!(none.to_string().contains("backups.recipients"), "{none}");

        let past = SystemTime::now() - std::time::Duration::from_secs(10 * 86_400);
        let (expired, _) = CertBuilder::general_purpose(Some("Old <old@example.org>"))
            .set_creation_time(past)
            .set_validity_period(std::time::Duration::from_secs(86_400))
            .generate()
            .unwrap();
        let message = refusal(dir.path(), &expired, false);
        assert!(message.contains("expired on"), "{message}");
        assert!(message.contains("backups.recipients[0]"), "{message}");

        let (cert, revocation) = CertBuilder::general_purpose(Some("Gone <gone@example.org>"))
            .generate()
            .unwrap();
        let (revoked, _) = cert.insert_packets(revocation).unwrap();
        let message = refusal(dir.path(), &revoked, false);
        assert!(message.contains("revoked"), "{message}");

        let message = refusal(dir.path(), &generate(), true);
        assert!(message.contains("secret key material"), "{message}");

        let (signing_only, _) = CertBuilder::new()
            .add_userid("Signer <signer@example.org>")
            .add_signing_subkey()
            .generate()
            .unwrap();
        let message = refusal(dir.path(), &signing_only, false);
        assert!(message.contains("no usable encryption key"), "{message}");
    }
}
