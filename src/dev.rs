//! Development material for `mc serve --dev` and `mc token`.
//!
//! This is an adapter, not core: it reads and writes files. [`ensure_dev_material`] keeps a
//! directory (default [`default_dev_dir`]) holding everything a local server needs:
//!
//! | file | contents | mode |
//! |---|---|---|
//! | `cert.pem` | self-signed ECDSA P-256 certificate, 13 days | 0644 |
//! | `key.pem` | its PKCS#8 private key | 0600 |
//! | `signing-key.pem` | Ed25519 PKCS#8 key minting meeting tokens (kid [`DEV_KID`]) | 0600 |
//! | `jwks.json` | the public JWKS of that key | 0644 |
//! | `binding-secret` | 32 random bytes, hex, for resume binding tokens | 0600 |
//!
//! The certificate suits browsers' WebTransport `serverCertificateHashes` (ECDSA, validity
//! ≤ 14 days): pass them [`DevMaterial::cert_sha256_b64`] or the hex form. It is replaced when it
//! is within a day of expiry, not yet valid, unreadable, not matching its key, or missing one of
//! the requested host names. The signing key and binding secret are created once and then reused,
//! so tokens minted earlier stay valid across restarts; an unreadable one is an error (delete it to
//! start over) rather than silently replaced. They are published with a no-clobber link, so two
//! processes starting together agree on one key.
//!
//! Only a directory this module creates gets mode 0700; an existing one keeps its permissions.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::core::binding::{BindingKey, BindingKeyError};
use crate::core::protocol::Role;
use crate::core::token::{MintClaims, SignerKeyError, TokenSigner};

/// The `kid` of the development signing key.
pub const DEV_KID: &str = "dev-1";

/// How long a generated certificate is valid (browsers accept at most 14 days for
/// `serverCertificateHashes`).
pub const CERT_VALIDITY: Duration = Duration::from_secs(13 * DAY_SECS);

/// A certificate is replaced when it expires within this long.
pub const CERT_RENEW_BEFORE: Duration = Duration::from_secs(DAY_SECS);

/// How far before "now" a generated certificate's validity starts, to absorb clock differences.
pub const CERT_BACKDATE: Duration = Duration::from_secs(3600);

/// Longest validity a reused certificate may have.
const MAX_CERT_VALIDITY_SECS: u64 = 14 * DAY_SECS;
const DAY_SECS: u64 = 24 * 3600;
/// 2100-01-01T00:00:00Z; later clocks are refused rather than fed to certificate encoding.
const MAX_UNIX_SECS: u64 = 4_102_444_800;

const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
const JWKS_FILE: &str = "jwks.json";
const SIGNING_KEY_FILE: &str = "signing-key.pem";
const BINDING_SECRET_FILE: &str = "binding-secret";

/// Host names every development certificate covers.
const DEFAULT_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Paths and fingerprints of the development material in one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevMaterial {
    /// The directory holding everything.
    pub dir: PathBuf,
    /// Certificate, PEM.
    pub cert_pem_path: PathBuf,
    /// Certificate private key, PKCS#8 PEM.
    pub key_pem_path: PathBuf,
    /// Public JWKS of the token signing key.
    pub jwks_path: PathBuf,
    /// Token signing key, PKCS#8 PEM (kid [`DEV_KID`]).
    pub signing_key_path: PathBuf,
    /// Binding-token secret, hex text.
    pub binding_secret_path: PathBuf,
    /// SHA-256 of the certificate DER, lowercase hex without separators.
    pub cert_sha256_hex: String,
    /// SHA-256 of the certificate DER, standard base64 with padding.
    pub cert_sha256_b64: String,
    /// End of the certificate's validity.
    pub cert_not_after: SystemTime,
}

/// Why development material could not be prepared or loaded.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file that should exist does not.
    #[error("{} not found; run `mc serve --dev` once to generate development material", path.display())]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// The certificate could not be generated (e.g. a host name is not a valid DNS name).
    #[error("generating the development certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// The signing key file exists but cannot be read as a key.
    #[error("{}: {source}; delete it to generate a new key (tokens minted with the old one stop working)", path.display())]
    SigningKey {
        /// The key file.
        path: PathBuf,
        /// Why it was refused.
        #[source]
        source: SignerKeyError,
    },
    /// The binding secret file exists but is not a usable secret.
    #[error("{}: {source}; delete it to generate a new secret", path.display())]
    BindingSecret {
        /// The secret file.
        path: PathBuf,
        /// Why it was refused.
        #[source]
        source: BindingKeyError,
    },
    /// The system clock is before 1970 or after 2099.
    #[error("the system clock is outside 1970..2100; cannot date a certificate")]
    Clock,
}

/// Creates or refreshes the development material in `dir` (see the module docs) as of `now`.
/// `hosts` are extra certificate names besides `localhost`, `127.0.0.1` and `::1`.
pub fn ensure_dev_material(
    dir: &Path,
    now: SystemTime,
    hosts: &[String],
) -> Result<DevMaterial, DevError> {
    let now_unix = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| DevError::Clock)?
        .as_secs();
    if !(CERT_BACKDATE.as_secs()..MAX_UNIX_SECS).contains(&now_unix) {
        return Err(DevError::Clock);
    }
    create_private_dir(dir)?;

    let signer = ensure_signing_key(dir)?;
    replace_if_changed(
        dir,
        JWKS_FILE,
        format!("{}\n", signer.jwks_json()).as_bytes(),
        0o644,
    )?;
    ensure_binding_secret(dir)?;
    let cert = ensure_cert(dir, now_unix, hosts)?;

    let digest = Sha256::digest(&cert.der);
    Ok(DevMaterial {
        dir: dir.to_path_buf(),
        cert_pem_path: dir.join(CERT_FILE),
        key_pem_path: dir.join(KEY_FILE),
        jwks_path: dir.join(JWKS_FILE),
        signing_key_path: dir.join(SIGNING_KEY_FILE),
        binding_secret_path: dir.join(BINDING_SECRET_FILE),
        cert_sha256_hex: encode_hex(&digest),
        cert_sha256_b64: STANDARD.encode(digest),
        cert_not_after: UNIX_EPOCH + Duration::from_secs(cert.not_after),
    })
}

/// The development directory: `$MC_DEV_DIR`, else `$XDG_STATE_HOME/mc/dev`, else
/// `$HOME/.local/state/mc/dev`, else `./.mc-dev`. Empty variables count as unset, and
/// `XDG_STATE_HOME` only counts when absolute (as the XDG spec says).
pub fn default_dev_dir() -> PathBuf {
    dev_dir_from(
        std::env::var_os("MC_DEV_DIR"),
        std::env::var_os("XDG_STATE_HOME"),
        std::env::var_os("HOME"),
    )
}

fn dev_dir_from(
    mc_dev_dir: Option<OsString>,
    xdg_state_home: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(mc_dev_dir) {
        return dir;
    }
    if let Some(state) = set(xdg_state_home).filter(|p| p.is_absolute()) {
        return state.join("mc").join("dev");
    }
    if let Some(home) = set(home) {
        return home.join(".local").join("state").join("mc").join("dev");
    }
    PathBuf::from(".mc-dev")
}

/// Loads the development token signing key (kid [`DEV_KID`]) from `dir`.
pub fn load_signer(dir: &Path) -> Result<TokenSigner, DevError> {
    let path = dir.join(SIGNING_KEY_FILE);
    let pem = read_existing(&path)?.ok_or_else(|| DevError::Missing { path: path.clone() })?;
    parse_signer(&path, &pem)
}

/// Loads the development binding secret from `dir`.
pub fn load_binding_key(dir: &Path) -> Result<BindingKey, DevError> {
    let path = dir.join(BINDING_SECRET_FILE);
    let bytes = read_existing(&path)?.ok_or_else(|| DevError::Missing { path: path.clone() })?;
    BindingKey::from_file_contents(&bytes)
        .map_err(|source| DevError::BindingSecret { path, source })
}

/// Mints a meeting token for `sub` as `role` in `meeting_id`, issued at `now_unix` and valid
/// for `ttl_secs`.
pub fn mint_token(
    signer: &TokenSigner,
    meeting_id: &str,
    role: Role,
    sub: &str,
    ttl_secs: u64,
    now_unix: u64,
) -> String {
    signer.mint(&MintClaims {
        sub: sub.to_owned(),
        meeting_id: meeting_id.to_owned(),
        role,
        iat: now_unix,
        exp: now_unix.saturating_add(ttl_secs),
        jti: None,
    })
}

fn create_private_dir(dir: &Path) -> Result<(), DevError> {
    if dir.is_dir() {
        return Ok(());
    }
    let io_err = |source| DevError::Io {
        path: dir.to_path_buf(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err)?;
    // The umask may have narrowed the mode further; make it exactly 0700.
    fs::set_permissions(dir, Permissions::from_mode(0o700)).map_err(io_err)
}

fn parse_signer(path: &Path, pem: &[u8]) -> Result<TokenSigner, DevError> {
    let text = std::str::from_utf8(pem).unwrap_or_default();
    TokenSigner::from_pkcs8_pem(text, DEV_KID).map_err(|source| DevError::SigningKey {
        path: path.to_path_buf(),
        source,
    })
}

fn ensure_signing_key(dir: &Path) -> Result<TokenSigner, DevError> {
    let path = dir.join(SIGNING_KEY_FILE);
    if let Some(pem) = read_existing(&path)? {
        return parse_signer(&path, &pem);
    }
    let signer = TokenSigner::generate(DEV_KID);
    if publish_new(
        dir,
        SIGNING_KEY_FILE,
        signer.to_pkcs8_pem().as_bytes(),
        0o600,
    )? {
        Ok(signer)
    } else {
        // Another process published one first: use that.
        load_signer(dir)
    }
}

fn ensure_binding_secret(dir: &Path) -> Result<(), DevError> {
    if read_existing(&dir.join(BINDING_SECRET_FILE))?.is_none() {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let text = format!("{}\n", encode_hex(&secret));
        publish_new(dir, BINDING_SECRET_FILE, text.as_bytes(), 0o600)?;
    }
    // Whichever secret ended up on disk must be usable.
    load_binding_key(dir).map(drop)
}

/// The certificate in use: its DER and end of validity (Unix seconds).
struct CertInUse {
    der: Vec<u8>,
    not_after: u64,
}

fn ensure_cert(dir: &Path, now_unix: u64, hosts: &[String]) -> Result<CertInUse, DevError> {
    let wanted = wanted_names(hosts);
    if let Some(current) = reusable_cert(dir, now_unix, &wanted)? {
        return Ok(current);
    }

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(wanted)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mc development certificate");
    let not_before = now_unix.saturating_sub(CERT_BACKDATE.as_secs());
    let not_after = not_before + CERT_VALIDITY.as_secs();
    params.not_before = (UNIX_EPOCH + Duration::from_secs(not_before)).into();
    params.not_after = (UNIX_EPOCH + Duration::from_secs(not_after)).into();
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key)?;

    // Key first: a reader seeing the new certificate then also finds its key. A reader that
    // catches the pair mid-update sees a mismatch and regenerates on its next start.
    replace_file(dir, KEY_FILE, key.serialize_pem().as_bytes(), 0o600)?;
    replace_file(dir, CERT_FILE, cert.pem().as_bytes(), 0o644)?;
    Ok(CertInUse {
        der: cert.der().to_vec(),
        not_after,
    })
}

/// The names a certificate must cover: the defaults plus `hosts`, normalised (IP addresses in
/// canonical form, DNS names lowercase), without duplicates, in order.
fn wanted_names(hosts: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for host in DEFAULT_HOSTS
        .iter()
        .copied()
        .chain(hosts.iter().map(String::as_str))
    {
        let host = host.trim();
        if host.is_empty() {
            continue;
        }
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => host.to_ascii_lowercase(),
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The existing certificate, if it is readable, matches its key, is valid now and for more
/// than [`CERT_RENEW_BEFORE`], spans at most 14 days and covers every wanted name.
fn reusable_cert(
    dir: &Path,
    now_unix: u64,
    wanted: &[String],
) -> Result<Option<CertInUse>, DevError> {
    let (Some(cert_pem), Some(key_pem)) = (
        read_existing(&dir.join(CERT_FILE))?,
        read_existing(&dir.join(KEY_FILE))?,
    ) else {
        return Ok(None);
    };
    let Some(der) = std::str::from_utf8(&cert_pem)
        .ok()
        .and_then(|pem| pem_to_der(pem, "CERTIFICATE"))
    else {
        return Ok(None);
    };
    let Some(info) = parse_cert(&der) else {
        return Ok(None);
    };
    let key_matches = std::str::from_utf8(&key_pem)
        .ok()
        .and_then(|pem| rcgen::KeyPair::from_pem(pem).ok())
        .is_some_and(|key| {
            use rcgen::PublicKeyData as _;
            key.subject_public_key_info() == info.spki
        });
    let fresh = info.not_before <= now_unix
        && info.not_after > now_unix.saturating_add(CERT_RENEW_BEFORE.as_secs())
        && info.not_after.saturating_sub(info.not_before) <= MAX_CERT_VALIDITY_SECS;
    let covers = wanted.iter().all(|name| info.names.contains(name));
    Ok((key_matches && fresh && covers).then_some(CertInUse {
        der,
        not_after: info.not_after,
    }))
}

/// Reads a file; `Ok(None)` if it does not exist.
fn read_existing(path: &Path) -> Result<Option<Vec<u8>>, DevError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DevError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `contents` to a fresh temporary file in `dir` with `mode`, returning its path.
fn write_temp(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<PathBuf, DevError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seq = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{seq}.tmp", std::process::id()));
    let io_err = |source| DevError::Io {
        path: tmp.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err)?;
    let written = file
        .set_permissions(Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents))
        .and_then(|()| file.sync_all());
    if let Err(source) = written {
        // Best effort: the write error is the one worth reporting.
        let _ = fs::remove_file(&tmp);
        return Err(io_err(source));
    }
    Ok(tmp)
}

/// Atomically replaces `dir/name` with `contents`.
fn replace_file(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), DevError> {
    let tmp = write_temp(dir, name, contents, mode)?;
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        DevError::Io { path, source }
    })
}

/// Like [`replace_file`], but leaves the file alone when it already has `contents`.
fn replace_if_changed(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), DevError> {
    if read_existing(&dir.join(name))?.as_deref() == Some(contents) {
        return Ok(());
    }
    replace_file(dir, name, contents, mode)
}

/// Creates `dir/name` with `contents` only if it does not exist, atomically (never a partial
/// file, never clobbering). Returns whether this call created it.
fn publish_new(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<bool, DevError> {
    let tmp = write_temp(dir, name, contents, mode)?;
    let path = dir.join(name);
    let linked = fs::hard_link(&tmp, &path);
    // Best effort: the temporary name is no longer needed either way.
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(DevError::Io { path, source }),
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The DER inside the first `label` block of a PEM text.
fn pem_to_der(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let (_, after_begin) = pem.split_once(&begin)?;
    let (body, _) = after_begin.split_once(&end)?;
    let body: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(body).ok()
}

/// What [`reusable_cert`] needs to know about a certificate.
#[derive(Debug)]
struct CertInfo {
    /// Start of validity, Unix seconds.
    not_before: u64,
    /// End of validity, Unix seconds.
    not_after: u64,
    /// The SubjectPublicKeyInfo, DER.
    spki: Vec<u8>,
    /// Subject alternative names: DNS names as written, IP addresses in canonical text form.
    names: Vec<String>,
}

// A minimal DER reader for our own certificates (RFC 5280 §4.1): just enough to find the
// validity, the public key and the subject alternative names. Single-byte tags only.

const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_VERSION: u8 = 0xa0;
const TAG_EXTENSIONS: u8 = 0xa3;
const TAG_SAN_DNS: u8 = 0x82;
const TAG_SAN_IP: u8 = 0x87;
/// id-ce-subjectAltName, 2.5.29.17.
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// Splits one TLV off `input`: `(tag, content, rest)`.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (len_bytes, rest) = rest.split_at_checked(n)?;
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((tag, content, rest))
}

/// Like [`tlv`], requiring `tag`: `(content, rest)`.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, content, rest) = tlv(input)?;
    (t == tag).then_some((content, rest))
}

fn parse_cert(der: &[u8]) -> Option<CertInfo> {
    let (cert, _) = expect(der, TAG_SEQUENCE)?;
    let (tbs, _) = expect(cert, TAG_SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&TAG_VERSION) {
        rest = tlv(rest)?.2;
    }
    rest = expect(rest, TAG_INTEGER)?.1; // serialNumber
    rest = expect(rest, TAG_SEQUENCE)?.1; // signature
    rest = expect(rest, TAG_SEQUENCE)?.1; // issuer
    let (validity, after_validity) = expect(rest, TAG_SEQUENCE)?;
    let (nb_tag, nb, validity) = tlv(validity)?;
    let (na_tag, na, _) = tlv(validity)?;
    let not_before = parse_time(nb_tag, nb)?;
    let not_after = parse_time(na_tag, na)?;
    rest = expect(after_validity, TAG_SEQUENCE)?.1; // subject
    let (_, after_spki) = expect(rest, TAG_SEQUENCE)?;
    let spki = rest.get(..rest.len() - after_spki.len())?.to_vec();
    rest = after_spki;
    let mut names = Vec::new();
    // Optional issuerUniqueID [1], subjectUniqueID [2], extensions [3].
    while let Some((tag, content, next)) = tlv(rest) {
        if tag == TAG_EXTENSIONS {
            names = parse_san(content)?;
        }
        rest = next;
    }
    Some(CertInfo {
        not_before,
        not_after,
        spki,
        names,
    })
}

/// The subject alternative names in an `[3] Extensions` content; empty if there is no SAN.
fn parse_san(extensions: &[u8]) -> Option<Vec<String>> {
    let (mut list, _) = expect(extensions, TAG_SEQUENCE)?;
    while !list.is_empty() {
        let (ext, next) = expect(list, TAG_SEQUENCE)?;
        list = next;
        let (oid, mut ext) = expect(ext, TAG_OID)?;
        if oid != OID_SUBJECT_ALT_NAME {
            continue;
        }
        if let Some((0x01, _, after_critical)) = tlv(ext) {
            ext = after_critical;
        }
        let (value, _) = expect(ext, TAG_OCTET_STRING)?;
        let (mut general_names, _) = expect(value, TAG_SEQUENCE)?;
        let mut names = Vec::new();
        while !general_names.is_empty() {
            let (tag, name, next) = tlv(general_names)?;
            general_names = next;
            match tag {
                TAG_SAN_DNS => names.push(String::from_utf8(name.to_vec()).ok()?),
                TAG_SAN_IP => {
                    let ip = match name.len() {
                        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(name).ok()?)),
                        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(name).ok()?)),
                        _ => return None,
                    };
                    names.push(ip.to_string());
                }
                _ => {}
            }
        }
        return Some(names);
    }
    Some(Vec::new())
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950..2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as
/// Unix seconds. Times before 1970 are refused.
fn parse_time(tag: u8, text: &[u8]) -> Option<u64> {
    let (year, rest) = match (tag, text.len()) {
        (TAG_UTC_TIME, 13) => {
            let yy = digits(text.get(..2)?)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
        }
        (TAG_GENERALIZED_TIME, 15) => (digits(text.get(..4)?)?, text.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| digits(rest.get(i..i + 2)?);
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if rest.get(10) != Some(&b'Z')
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    Some(days * DAY_SECS + hour * 3600 + minute * 60 + second)
}

fn digits(text: &[u8]) -> Option<u64> {
    text.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: u64, month: u64, day: u64) -> i64 {
    let (y, m, d) = (year as i64, month as i64, day as i64);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::token::TokenVerifier;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static SEQ: AtomicU64 = AtomicU64::new(0);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let dir = std::env::temp_dir().join(format!(
                "mc-dev-test-{name}-{}-{nanos}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            Self(dir)
        }

        /// A not-yet-existing directory inside, so `ensure_dev_material` creates it.
        fn dev(&self) -> PathBuf {
            self.0.join("state").join("dev")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// 2025-06-01T12:00:00Z.
    const NOW_UNIX: u64 = 1_748_779_200;

    fn at(unix: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix)
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn cert_info(m: &DevMaterial) -> (Vec<u8>, CertInfo) {
        let pem = fs::read_to_string(&m.cert_pem_path).unwrap();
        let der = pem_to_der(&pem, "CERTIFICATE").unwrap();
        let info = parse_cert(&der).unwrap();
        (der, info)
    }

    #[test]
    fn generates_everything() {
        let tmp = TempDir::new("gen");
        let dir = tmp.dev();
        let m = ensure_dev_material(&dir, at(NOW_UNIX), &["mc.test".into()]).unwrap();
        assert_eq!(m.dir, dir);
        for p in [
            &m.cert_pem_path,
            &m.key_pem_path,
            &m.jwks_path,
            &m.signing_key_path,
            &m.binding_secret_path,
        ] {
            assert!(p.is_file(), "{}", p.display());
            assert!(p.starts_with(&dir));
        }
        let cert_pem = fs::read_to_string(&m.cert_pem_path).unwrap();
        assert!(cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let key_pem = fs::read_to_string(&m.key_pem_path).unwrap();
        assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));

        let (der, info) = cert_info(&m);
        assert!(der.len() > 200 && der.len() < 2000, "{}", der.len());
        assert_eq!(m.cert_sha256_hex, encode_hex(&Sha256::digest(&der)));
        assert_eq!(m.cert_sha256_hex.len(), 64);
        assert_eq!(
            STANDARD.decode(&m.cert_sha256_b64).unwrap(),
            Sha256::digest(&der).to_vec()
        );
        // Validity: from an hour ago, 13 days, within the browsers' 14-day limit.
        assert_eq!(info.not_before, NOW_UNIX - 3600);
        assert_eq!(info.not_after, NOW_UNIX - 3600 + 13 * DAY_SECS);
        assert!(info.not_after - info.not_before <= 14 * DAY_SECS);
        assert_eq!(m.cert_not_after, at(info.not_after));
        assert_eq!(info.names, ["localhost", "127.0.0.1", "::1", "mc.test"]);
        // ECDSA P-256 key: id-ecPublicKey with the prime256v1 curve.
        let p256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        assert!(info.spki.windows(p256.len()).any(|w| w == p256));

        let secret = fs::read_to_string(&m.binding_secret_path).unwrap();
        assert_eq!(secret.trim().len(), 64);
        assert!(load_binding_key(&dir).is_ok());
    }

    #[test]
    fn permissions() {
        let tmp = TempDir::new("perm");
        let dir = tmp.dev();
        let m = ensure_dev_material(&dir, at(NOW_UNIX), &[]).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&m.key_pem_path), 0o600);
        assert_eq!(mode(&m.signing_key_path), 0o600);
        assert_eq!(mode(&m.binding_secret_path), 0o600);
        assert_eq!(mode(&m.cert_pem_path), 0o644);
        assert_eq!(mode(&m.jwks_path), 0o644);
        // No temporary files left behind.
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn reuses_existing_material() {
        let tmp = TempDir::new("reuse");
        let dir = tmp.dev();
        let first = ensure_dev_material(&dir, at(NOW_UNIX), &[]).unwrap();
        let signing = fs::read(&first.signing_key_path).unwrap();
        let secret = fs::read(&first.binding_secret_path).unwrap();
        let token = mint_token(
            &load_signer(&dir).unwrap(),
            "m1",
            Role::Host,
            "u",
            3600,
            NOW_UNIX,
        );

        // Restarted five days later: same certificate, keys and secret.
        let later = NOW_UNIX + 5 * DAY_SECS;
        let second = ensure_dev_material(&dir, at(later), &[]).unwrap();
        assert_eq!(second, first);
        assert_eq!(fs::read(&second.signing_key_path).unwrap(), signing);
        assert_eq!(fs::read(&second.binding_secret_path).unwrap(), secret);
        let jwks = fs::read_to_string(&second.jwks_path).unwrap();
        let verifier = TokenVerifier::from_jwks_json(&jwks, 0).unwrap();
        assert!(verifier.verify(&token, "m1", NOW_UNIX + 10).is_ok());
        // Host names already covered do not force a new certificate.
        let third = ensure_dev_material(&dir, at(later), &["LOCALHOST".into(), "::1".into()]);
        assert_eq!(third.unwrap().cert_sha256_hex, first.cert_sha256_hex);
    }

    #[test]
    fn regenerates_expiring_certificate_only() {
        let tmp = TempDir::new("renew");
        let dir = tmp.dev();
        let first = ensure_dev_material(&dir, at(NOW_UNIX), &[]).unwrap();
        let signing = fs::read(&first.signing_key_path).unwrap();
        let secret = fs::read(&first.binding_secret_path).unwrap();

        // Just over a day left: kept.
        let not_after = NOW_UNIX - 3600 + 13 * DAY_SECS;
        let kept = ensure_dev_material(&dir, at(not_after - DAY_SECS - 1), &[]).unwrap();
        assert_eq!(kept.cert_sha256_hex, first.cert_sha256_hex);

        // A day or less left: replaced, with a fresh 13-day validity.
        let renew_at = not_after - DAY_SECS;
        let renewed = ensure_dev_material(&dir, at(renew_at), &[]).unwrap();
        assert_ne!(renewed.cert_sha256_hex, first.cert_sha256_hex);
        let (_, info) = cert_info(&renewed);
        assert_eq!(info.not_before, renew_at - 3600);
        assert!(info.not_after > renew_at + 12 * DAY_SECS);
        // Tokens keep working: the signing key and binding secret are untouched.
        assert_eq!(fs::read(&renewed.signing_key_path).unwrap(), signing);
        assert_eq!(fs::read(&renewed.binding_secret_path).unwrap(), secret);

        // Long expired: replaced too.
        let much_later = NOW_UNIX + 100 * DAY_SECS;
        let again = ensure_dev_material(&dir, at(much_later), &[]).unwrap();
        assert_ne!(again.cert_sha256_hex, renewed.cert_sha256_hex);
        assert!(again.cert_not_after > at(much_later));
    }

    #[test]
    fn regenerates_for_new_host_clock_skew_and_broken_files() {
        let tmp = TempDir::new("regen");
        let dir = tmp.dev();
        let first = ensure_dev_material(&dir, at(NOW_UNIX), &[]).unwrap();

        let with_host = ensure_dev_material(&dir, at(NOW_UNIX), &["10.0.0.7".into()]).unwrap();
        assert_ne!(with_host.cert_sha256_hex, first.cert_sha256_hex);
        assert!(cert_info(&with_host)
            .1
            .names
            .contains(&"10.0.0.7".to_string()));

        // The clock went back before the certificate's start.
        let back = ensure_dev_material(&dir, at(NOW_UNIX - 2 * 3600), &[]).unwrap();
        assert_ne!(back.cert_sha256_hex, with_host.cert_sha256_hex);

        // The key no longer matches the certificate.
        let other_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        fs::write(&back.key_pem_path, other_key.serialize_pem()).unwrap();
        let rekeyed = ensure_dev_material(&dir, at(NOW_UNIX), &[]).unwrap();
        assert_ne!(rekeyed.cert_sha256_hex, back.cert_sha256_hex);

        // A garbled or missing certificate.
        fs::write(&rekeyed.cert_pem_path, "garbage").unwrap();
        let fixed = ensure_dev_material(&dir, at(NOW_UNIX), &[]).unwrap();
        assert_ne!(fixed.cert_sha256_hex, rekeyed.cert_sha256_hex);
        fs::remove_file(&fixed.cert_pem_path).unwrap();
        assert!(ensure_dev_material(&dir, at(NOW_UNIX), &[]).is_ok());
        assert!(fixed.cert_pem_path.is_file());
    }

    #[test]
    fn invalid_host_is_an_error() {
        let tmp = TempDir::new("badhost");
        let err = ensure_dev_material(&tmp.dev(), at(NOW_UNIX), &["bad\u{e9}host".into()]);
        assert!(matches!(err, Err(DevError::Cert(_))), "{err:?}");
    }

    #[test]
    fn broken_secrets_are_errors_not_replaced() {
        let tmp = TempDir::new("broken");
        let dir = tmp.dev();
        let m = ensure_dev_material(&dir, at(NOW_UNIX), &[]).unwrap();
        fs::write(&m.signing_key_path, "not a key").unwrap();
        let err = ensure_dev_material(&dir, at(NOW_UNIX), &[]).unwrap_err();
        assert!(matches!(err, DevError::SigningKey { .. }), "{err:?}");
        assert!(err.to_string().contains("signing-key.pem"));
        assert_eq!(
            fs::read_to_string(&m.signing_key_path).unwrap(),
            "not a key"
        );
        assert!(matches!(
            load_signer(&dir),
            Err(DevError::SigningKey { .. })
        ));

        fs::remove_file(&m.signing_key_path).unwrap();
        fs::write(&m.binding_secret_path, "abcd").unwrap();
        let err = ensure_dev_material(&dir, at(NOW_UNIX), &[]).unwrap_err();
        assert!(matches!(err, DevError::BindingSecret { .. }), "{err:?}");
    }

    #[test]
    fn jwks_verifies_minted_token() {
        let tmp = TempDir::new("jwks");
        let dir = tmp.dev();
        let m = ensure_dev_material(&dir, at(NOW_UNIX), &[]).unwrap();
        let signer = load_signer(&dir).unwrap();
        assert_eq!(signer.kid(), DEV_KID);
        let token = mint_token(&signer, "standup", Role::Participant, "bob", 600, NOW_UNIX);
        let verifier =
            TokenVerifier::from_jwks_json(&fs::read_to_string(&m.jwks_path).unwrap(), 30).unwrap();
        assert_eq!(verifier.key_count(), 1);
        let claims = verifier.verify(&token, "standup", NOW_UNIX + 1).unwrap();
        assert_eq!(claims.sub, "bob");
        assert_eq!(claims.role, Role::Participant);
        assert_eq!(claims.iat, NOW_UNIX);
        assert_eq!(claims.exp, NOW_UNIX + 600);
        assert!(verifier.verify(&token, "standup", NOW_UNIX + 600).is_err());
    }

    #[test]
    fn load_from_empty_dir_says_what_to_do() {
        let tmp = TempDir::new("empty");
        let err = load_signer(&tmp.0).unwrap_err();
        assert!(matches!(err, DevError::Missing { .. }));
        assert!(err.to_string().contains("mc serve --dev"));
        assert!(matches!(
            load_binding_key(&tmp.0),
            Err(DevError::Missing { .. })
        ));
    }

    #[test]
    fn existing_dir_keeps_its_mode() {
        let tmp = TempDir::new("existing");
        fs::create_dir_all(&tmp.0).unwrap();
        fs::set_permissions(&tmp.0, Permissions::from_mode(0o755)).unwrap();
        ensure_dev_material(&tmp.0, at(NOW_UNIX), &[]).unwrap();
        assert_eq!(mode(&tmp.0), 0o755);
    }

    #[test]
    fn publish_new_never_clobbers() {
        let tmp = TempDir::new("publish");
        fs::create_dir_all(&tmp.0).unwrap();
        assert!(publish_new(&tmp.0, "f", b"one", 0o600).unwrap());
        assert!(!publish_new(&tmp.0, "f", b"two", 0o600).unwrap());
        assert_eq!(fs::read(tmp.0.join("f")).unwrap(), b"one");
        assert_eq!(fs::read_dir(&tmp.0).unwrap().count(), 1);
    }

    #[test]
    fn clock_out_of_range() {
        let tmp = TempDir::new("clock");
        let before_epoch = UNIX_EPOCH - Duration::from_secs(1);
        assert!(matches!(
            ensure_dev_material(&tmp.dev(), before_epoch, &[]),
            Err(DevError::Clock)
        ));
        assert!(matches!(
            ensure_dev_material(&tmp.dev(), at(MAX_UNIX_SECS), &[]),
            Err(DevError::Clock)
        ));
        assert!(!tmp.dev().exists());
    }

    #[test]
    fn dev_dir_resolution() {
        let s = |v: &str| Some(OsString::from(v));
        assert_eq!(
            dev_dir_from(s("/x/dev"), s("/state"), s("/home/u")),
            PathBuf::from("/x/dev")
        );
        assert_eq!(
            dev_dir_from(s(""), s("/state"), s("/home/u")),
            PathBuf::from("/state/mc/dev")
        );
        assert_eq!(
            dev_dir_from(None, s("relative"), s("/home/u")),
            PathBuf::from("/home/u/.local/state/mc/dev")
        );
        assert_eq!(dev_dir_from(None, None, None), PathBuf::from(".mc-dev"));
    }

    #[test]
    fn wanted_names_are_normalised() {
        let names = wanted_names(&[
            "Example.TEST".into(),
            " ".into(),
            "0:0:0:0:0:0:0:1".into(),
            "example.test".into(),
        ]);
        assert_eq!(names, ["localhost", "127.0.0.1", "::1", "example.test"]);
    }

    #[test]
    fn der_times() {
        assert_eq!(parse_time(TAG_UTC_TIME, b"700101000000Z"), Some(0));
        assert_eq!(parse_time(TAG_UTC_TIME, b"250601120000Z"), Some(NOW_UNIX));
        assert_eq!(
            parse_time(TAG_GENERALIZED_TIME, b"20250601120000Z"),
            Some(NOW_UNIX)
        );
        // 2024-02-29 exists; 2050 needs GeneralizedTime.
        assert_eq!(
            parse_time(TAG_UTC_TIME, b"240229000000Z"),
            Some(1_709_164_800)
        );
        assert_eq!(
            parse_time(TAG_GENERALIZED_TIME, b"20500101000000Z"),
            Some(2_524_608_000)
        );
        for bad in [
            &b"250601120000"[..],
            b"251301120000Z",
            b"2506011200000",
            b"25060112000aZ",
            b"690101000000Z",
        ] {
            assert_eq!(parse_time(TAG_UTC_TIME, bad), None, "{bad:?}");
        }
        assert_eq!(parse_time(TAG_OCTET_STRING, b"250601120000Z"), None);
    }

    #[test]
    fn der_reader_rejects_truncation() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        assert_eq!(parse_cert(&der).unwrap().names, ["a.test"]);
        for cut in [0, 1, 10, der.len() / 2, der.len() - 1] {
            assert!(parse_cert(&der[..cut]).is_none(), "cut at {cut}");
        }
        assert!(parse_cert(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
    }
}
