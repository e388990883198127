//! The web configuration file of `netwatch serve --web.config.file`: the format Prometheus
//! exporters share (exporter-toolkit's `web-config.yml`), so that one file and one habit serve
//! every exporter on a node.
//!
//! Read: `tls_server_config` with `cert_file` and `key_file` (PEM; relative paths are relative
//! to the file's directory), `client_auth_type` and `client_ca_file` (client certificates), and
//! `basic_auth_users`, user names to bcrypt hashes. Any other key (cipher choices,
//! `http_server_config`, ...) or value is refused by name rather than silently ignored.
//!
//! Like exporter-toolkit, the file is read again when it changes ([`WebConfigFile`]): a new
//! password or a renewed certificate applies to the next connection, without a restart that
//! would lose the tracker's state.
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use base64::Engine as _;
use serde::Deserialize;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
        client::danger::HandshakeSignatureValid,
        crypto::CryptoProvider,
        pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject as _},
        server::{
            WebPkiClientVerifier,
            danger::{ClientCertVerified, ClientCertVerifier},
        },
    },
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_auth_type: ClientAuth,
    /// The CA certificates (PEM) client certificates are verified against.
    client_ca_file: Option<PathBuf>,
}

/// `client_auth_type`: Go's `tls.ClientAuthType` names, as exporter-toolkit takes them.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    NoClientCert,
    /// One is asked for, not required, not verified.
    RequestClientCert,
    /// One is required, not verified.
    RequireAnyClientCert,
    /// One is asked for, not required; when given, it must be signed by `client_ca_file`.
    VerifyClientCertIfGiven,
    /// One signed by `client_ca_file` is required.
    RequireAndVerifyClientCert,
}

/// What the server does with a connection and a request: TLS or not, and who may ask.
#[derive(Clone, Default)]
pub struct WebConfig {
    pub tls: Option<TlsAcceptor>,
    /// The files the config names (certificates, keys), as read.
    files: Vec<PathBuf>,
    /// User name to bcrypt hash; empty: no authentication.
    users: Arc<HashMap<String, String>>,
    /// Compared against when the user is unknown, so that a wrong user takes as long as a
    /// wrong password (a hash of the users' cost).
    dummy: Arc<String>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl WebConfig {
    /// Reads `text`, the file at `path`'s.
    fn from_text(path: &Path, text: &str) -> anyhow::Result<Self> {
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(text, dir).with_context(|| {
            format!(
                "web config {}: netwatch reads tls_server_config (cert_file, key_file, \
                 client_auth_type, client_ca_file) and basic_auth_users",
                path.display()
            )
        })
    }

    /// Reads a web config's text; relative paths are taken from `dir`.
    pub fn parse(text: &str, dir: &Path) -> anyhow::Result<Self> {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_norway::from_str(text)?
        };
        let mut cost = None;
        for (user, hash) in &file.basic_auth_users {
            let parts = hash
                .parse::<bcrypt::HashParts>()
                .map_err(|e| anyhow::anyhow!("basic_auth_users: {user}: not a bcrypt hash: {e}"))?;
            cost = Some(parts.get_cost());
        }
        let dummy = match cost {
            Some(cost) => bcrypt::hash("netwatch", cost)?,
            None => String::new(),
        };
        let mut files = Vec::new();
        let tls = match file.tls_server_config {
            None => None,
            Some(t) => {
                let (cert, key) = (dir.join(t.cert_file), dir.join(t.key_file));
                let client_ca = t.client_ca_file.map(|ca| dir.join(ca));
                let tls = acceptor(&cert, &key, t.client_auth_type, client_ca.as_deref())?;
                files.extend([cert, key]);
                files.extend(client_ca);
                Some(tls)
            }
        };
        Ok(Self {
            tls,
            files,
            users: Arc::new(file.basic_auth_users),
            dummy: Arc::new(dummy),
        })
    }

    /// Whether requests must carry a user and password.
    pub fn requires_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether the `Authorization` header's value (`Basic base64(user:password)`) names a user
    /// of the file with their password; always true when the file names no users. Runs bcrypt
    /// (tens of ms by design) away from the runtime's thread.
    pub async fn authorized(&self, header: Option<&[u8]>) -> bool {
        if !self.requires_auth() {
            return true;
        }
        let Some((user, password)) = header.and_then(basic_credentials) else {
            return false;
        };
        let known = self.users.get(&user);
        let hash = known.unwrap_or(&self.dummy).clone();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        ok && known.is_some()
    }
}

/// `(user, password)` from an `Authorization: Basic ...` value.
fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// A TLS acceptor with the certificate chain and key of these PEM files, asking clients for
/// certificates as `client_auth` says (HTTP/1.1 offered by ALPN; TLS 1.2 and 1.3).
fn acceptor(
    cert_file: &Path,
    key_file: &Path,
    client_auth: ClientAuth,
    client_ca_file: Option<&Path>,
) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| anyhow::anyhow!("cert_file {}: {e}", cert_file.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "cert_file {}: no certificate in it",
        cert_file.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| anyhow::anyhow!("key_file {}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = client_verifier(client_auth, client_ca_file, &provider)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("the certificate and key do not make a TLS identity")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How client certificates are checked; `None`: none is asked for. As exporter-toolkit, a
/// `client_ca_file` without a mode that asks for certificates is an error, not ignored.
fn client_verifier(
    auth: ClientAuth,
    ca_file: Option<&Path>,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<Option<Arc<dyn ClientCertVerifier>>> {
    let verified = |ca_file: Option<&Path>| {
        let ca_file = ca_file.ok_or_else(|| {
            anyhow::anyhow!(
                "client_auth_type {auth:?} verifies client certificates: set client_ca_file \
                 to the CA certificates (PEM) that sign them"
            )
        })?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| anyhow::anyhow!("client_ca_file {}: {e}", ca_file.display()))?
        {
            let cert =
                cert.map_err(|e| anyhow::anyhow!("client_ca_file {}: {e}", ca_file.display()))?;
            roots.add(cert).with_context(|| {
                format!("client_ca_file {}: not a CA certificate", ca_file.display())
            })?;
        }
        anyhow::ensure!(
            !roots.is_empty(),
            "client_ca_file {}: no certificate in it",
            ca_file.display()
        );
        Ok::<_, anyhow::Error>(WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        ))
    };
    Ok(Some(match auth {
        ClientAuth::NoClientCert => {
            anyhow::ensure!(
                ca_file.is_none(),
                "client_ca_file is set but client_auth_type is NoClientCert: set \
                 client_auth_type (RequireAndVerifyClientCert or VerifyClientCertIfGiven) or \
                 remove client_ca_file"
            );
            return Ok(None);
        }
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => {
            Arc::new(AnyClientCert {
                provider: provider.clone(),
                required: auth == ClientAuth::RequireAnyClientCert,
            })
        }
        ClientAuth::VerifyClientCertIfGiven => verified(ca_file)?
            .allow_unauthenticated()
            .build()
            .context("client_ca_file")?,
        ClientAuth::RequireAndVerifyClientCert => {
            verified(ca_file)?.build().context("client_ca_file")?
        }
    }))
}

/// `RequestClientCert` and `RequireAnyClientCert`: any certificate is taken unverified (what
/// those modes mean); the client still proves it holds the certificate's key.
#[derive(Debug)]
struct AnyClientCert {
    provider: Arc<CryptoProvider>,
    required: bool,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The text of the web config file at `path`.
fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("reading the web config {}", path.display()))
}

/// What identifies one state of a file: device, inode, modification time, size; `None` when
/// it cannot be read. A new inode catches a file replaced by rename (a Kubernetes secret's
/// symlink swap).
type Stamp = Option<(u64, u64, i64, i64, u64)>;

fn stamp_of(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
}

/// The web config as its file says now: read again, on the blocking pool, when the file or a
/// file it names (certificate, key, CA) has changed since it was last read. While the file is
/// broken, connections are closed unanswered (as exporter-toolkit does): a password being
/// revoked must not stay valid because of a typo. Without a file, the fixed config it holds.
///
/// Why metadata first: every new connection asks, and reading the file each time costs a
/// read under a lock that every connection takes. Device, inode, modification time and size
/// ([`Stamp`]) say whether it changed, except for a write in the same tick of the file
/// system's clock as the one before it: while the last reading is that close to the file's
/// modification time ([`RACY`]), its text is compared too (git's "racily clean" files).
///
/// Why one reload at a time: connections that come while the file is read again use the
/// config as it was, rather than each reading and parsing the file (a config with users
/// hashes a password at every reading) and racing to store what it read.
#[derive(Clone)]
pub struct WebConfigFile {
    path: Option<Arc<PathBuf>>,
    last: Arc<Mutex<Read>>,
    /// Set while a reload runs.
    reloading: Arc<AtomicBool>,
}

/// The last reading of the file.
struct Read {
    /// The file's text (`None`: unreadable).
    text: Option<String>,
    /// The file's, taken before its text was read.
    stamp: Stamp,
    /// When its text was last read (or found unchanged).
    checked: SystemTime,
    /// Of the files the config named.
    stamps: Vec<Stamp>,
    config: Result<WebConfig, String>,
    at: Instant,
}

/// How often a broken file is read again although it did not change: what is wrong may be
/// in a file it names that it could not read (a certificate not there yet).
const BROKEN_RETRY: Duration = Duration::from_secs(1);

/// How close to the file's modification time a reading is too close for the time to tell a
/// later write (file systems keep times to a clock tick, some to 1 or 2 s).
const RACY: Duration = Duration::from_secs(2);

/// What a reload found.
enum Reread {
    /// The same text, and the files it names unchanged: the file's stamp as now.
    Same(Stamp),
    Changed(Read),
}

impl Read {
    /// Reads the file at `path`.
    fn now(path: &Path) -> Read {
        let stamp = stamp_of(path);
        Self::of_text(path, stamp, read_text(path))
    }

    /// The reading of `text`, the file at `path`'s when it had `stamp`.
    fn of_text(path: &Path, stamp: Stamp, text: anyhow::Result<String>) -> Read {
        let config = text
            .as_ref()
            .map_err(|e| format!("{e:#}"))
            .and_then(|text| WebConfig::from_text(path, text).map_err(|e| format!("{e:#}")));
        let stamps = match &config {
            Ok(config) => config.files.iter().map(|f| stamp_of(f)).collect(),
            Err(_) => Vec::new(),
        };
        Read {
            text: text.ok(),
            stamp,
            checked: SystemTime::now(),
            stamps,
            config,
            at: Instant::now(),
        }
    }

    /// Whether a file the config names changed since it was read.
    fn files_changed(&self) -> bool {
        match &self.config {
            Ok(config) => config
                .files
                .iter()
                .map(|f| stamp_of(f))
                .ne(self.stamps.iter().copied()),
            Err(_) => false,
        }
    }

    /// Whether the file should be read again, by metadata (see [`WebConfigFile`]): it, or a
    /// file it names, changed; its last reading was too close to its modification to tell; or
    /// it is broken and was last read [`BROKEN_RETRY`] ago.
    fn stale(&self, path: &Path) -> bool {
        let broken_retry = self.config.is_err() && self.at.elapsed() >= BROKEN_RETRY;
        broken_retry || self.racy() || stamp_of(path) != self.stamp || self.files_changed()
    }

    /// Whether the last check of the text came within [`RACY`] of the file's modification.
    fn racy(&self) -> bool {
        let Some((_, _, secs, nanos, _)) = self.stamp else {
            return false;
        };
        let modified = u64::try_from(secs)
            .ok()
            .map(|s| UNIX_EPOCH + Duration::new(s, u32::try_from(nanos).unwrap_or(0)));
        modified.is_none_or(|m| self.checked.duration_since(m).unwrap_or_default() < RACY)
    }

    /// Reads the file at `path` again: [`Reread::Same`] when its text is `self`'s and nothing
    /// it names changed (no parsing, no password hashed), else the new reading.
    fn reread(text: Option<String>, files_changed: bool, broken: bool, path: &Path) -> Reread {
        let stamp = stamp_of(path);
        let now = read_text(path);
        if !broken && !files_changed && now.as_ref().ok() == text.as_ref() {
            return Reread::Same(stamp);
        }
        Reread::Changed(Self::of_text(path, stamp, now))
    }
}

/// Clears the reload flag when the reload ends, however it ends.
struct Reloading<'a>(&'a AtomicBool);

impl Drop for Reloading<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl WebConfigFile {
    /// The file at `path`, read now: an error here stops `serve` from starting.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let read = Read::now(path);
        if let Err(e) = &read.config {
            anyhow::bail!("{e}");
        }
        Ok(Self {
            path: Some(Arc::new(path.to_path_buf())),
            last: Arc::new(Mutex::new(read)),
            reloading: Arc::default(),
        })
    }

    /// A config that never changes (no `--web.config.file`: plain HTTP, no users).
    pub fn fixed(config: WebConfig) -> Self {
        Self {
            path: None,
            last: Arc::new(Mutex::new(Read {
                text: None,
                stamp: None,
                checked: SystemTime::now(),
                stamps: Vec::new(),
                config: Ok(config),
                at: Instant::now(),
            })),
            reloading: Arc::default(),
        }
    }

    fn last(&self) -> std::sync::MutexGuard<'_, Read> {
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The config as last read, not read again: `None` while the file is broken.
    pub fn last_read(&self) -> Option<WebConfig> {
        self.last().config.as_ref().ok().cloned()
    }

    /// The config for a new connection: read again first if it changed, unless another
    /// connection is reading it (this one then takes the config as it is); `None` while the
    /// file is broken.
    pub async fn current(&self) -> Option<WebConfig> {
        let Some(path) = &self.path else {
            return self.last_read();
        };
        let (text, files_changed, was_broken) = {
            let last = self.last();
            if !last.stale(path) {
                return last.config.as_ref().ok().cloned();
            }
            if self.reloading.swap(true, Ordering::Acquire) {
                return last.config.as_ref().ok().cloned();
            }
            (
                last.text.clone(),
                last.files_changed(),
                last.config.is_err(),
            )
        };
        let _reloading = Reloading(&self.reloading);
        let path = Arc::clone(path);
        let reread = tokio::task::spawn_blocking(move || {
            Read::reread(text, files_changed, was_broken, &path)
        })
        .await
        .ok()?;
        let read = match reread {
            Reread::Same(stamp) => {
                let mut last = self.last();
                last.stamp = stamp;
                last.checked = SystemTime::now();
                return last.config.as_ref().ok().cloned();
            }
            Reread::Changed(read) => read,
        };
        let shown = self.path.as_deref().map(|p| p.display().to_string());
        let shown = shown.unwrap_or_default();
        match &read.config {
            Ok(_) => log::info!("web config {shown}: read again"),
            // Said once per breakage, not at every retry.
            Err(e) if was_broken => log::debug!("web config {shown}: {e}"),
            Err(e) => {
                log::warn!("web config {shown}: {e}; connections are closed until it is fixed")
            }
        }
        let config = read.config.as_ref().ok().cloned();
        *self.last() = read;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_users_and_refuses_what_it_does_not_know() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let c = WebConfig::parse(
            &format!("basic_auth_users:\n  prometheus: {hash}\n"),
            Path::new("."),
        )
        .unwrap();
        assert!(c.requires_auth() && c.tls.is_none());
        assert!(
            !WebConfig::parse("", Path::new("."))
                .unwrap()
                .requires_auth()
        );
        for bad in [
            "basic_auth_users:\n  prometheus: plaintext\n",
            "tls_server_config:\n  cert_file: a.pem\n  key_file: b.pem\n  client_auth_type: RequireAndVerifyClientCert\n",
            "http_server_config:\n  http2: false\n",
            "tls_server_config:\n  cert_file: /nonexistent/a.pem\n  key_file: /nonexistent/b.pem\n",
        ] {
            assert!(WebConfig::parse(bad, Path::new(".")).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_basic_credentials() {
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("prometheus:pa:ss")
        );
        assert_eq!(
            basic_credentials(header.as_bytes()),
            Some(("prometheus".into(), "pa:ss".into()))
        );
        assert_eq!(basic_credentials(b"Bearer abc"), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
    }

    #[tokio::test]
    async fn checks_passwords_with_bcrypt() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let c = WebConfig::parse(
            &format!("basic_auth_users:\n  prometheus: '{hash}'\n"),
            Path::new("."),
        )
        .unwrap();
        let basic = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        assert!(
            c.authorized(Some(basic("prometheus", "secret").as_bytes()))
                .await
        );
        assert!(
            !c.authorized(Some(basic("prometheus", "wrong").as_bytes()))
                .await
        );
        assert!(
            !c.authorized(Some(basic("nobody", "secret").as_bytes()))
                .await
        );
        assert!(!c.authorized(None).await);
        assert!(WebConfig::default().authorized(None).await);
    }

    /// A web config naming one user (`a` or `b`: the same length), its hash `hash`.
    fn users_file(user: &str, hash: &str) -> String {
        format!("basic_auth_users:\n  {user}: '{hash}'\n")
    }

    fn user_of(config: Option<WebConfig>) -> Vec<String> {
        config.unwrap().users.keys().cloned().collect()
    }

    /// Rewrites `path` in place with `text` (the same length), then sets its modification
    /// time back: device, inode, time and size as before.
    fn rewrite_keeping_stamp(path: &Path, text: &str) {
        let modified = std::fs::metadata(path).unwrap().modified().unwrap();
        std::fs::write(path, text).unwrap();
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(modified).unwrap();
        drop(file);
        assert_eq!(
            std::fs::metadata(path).unwrap().modified().unwrap(),
            modified
        );
    }

    #[tokio::test]
    async fn the_file_is_read_again_when_its_metadata_changed_or_cannot_tell() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let scratch = crate::host::scratch::Scratch::new("web-config-stamp");
        let path = scratch.path("web-config.yml");
        std::fs::write(&path, users_file("a", &hash)).unwrap();
        // Modified long before it is read: its metadata tells every later change.
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
        drop(file);
        let web = WebConfigFile::open(&path).unwrap();
        assert!(!web.last().racy());
        rewrite_keeping_stamp(&path, &users_file("b", &hash));
        assert_eq!(
            user_of(web.current().await),
            ["a"],
            "same metadata: the file is not read"
        );
        std::fs::write(&path, users_file("b", &hash)).unwrap();
        assert_eq!(user_of(web.current().await), ["b"], "a new time: read");

        // Read right after a write: a second write in the same clock tick keeps the time, so
        // the text is compared as long as the reading is that close to it.
        std::fs::write(&path, users_file("a", &hash)).unwrap();
        let web = WebConfigFile::open(&path).unwrap();
        assert!(web.last().racy());
        rewrite_keeping_stamp(&path, &users_file("b", &hash));
        assert_eq!(user_of(web.current().await), ["b"]);
    }

    #[tokio::test]
    async fn a_connection_during_a_reload_takes_the_config_as_it_is() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let scratch = crate::host::scratch::Scratch::new("web-config-reload");
        let path = scratch.path("web-config.yml");
        std::fs::write(&path, users_file("a", &hash)).unwrap();
        let web = WebConfigFile::open(&path).unwrap();
        std::fs::write(&path, users_file("b", &hash)).unwrap();
        // Another connection's reload is running.
        web.reloading.store(true, Ordering::Release);
        assert_eq!(user_of(web.current().await), ["a"]);
        assert_eq!(
            user_of(web.clone().current().await),
            ["a"],
            "clones share it"
        );
        web.reloading.store(false, Ordering::Release);
        assert_eq!(user_of(web.current().await), ["b"]);
        assert!(
            !web.reloading.load(Ordering::Acquire),
            "the flag is cleared when a reload ends"
        );
        // Broken: connections get nothing, and the next reload reads it again.
        std::fs::write(&path, "basic_auth_users: [").unwrap();
        assert!(web.current().await.is_none());
        std::fs::write(&path, users_file("a", &hash)).unwrap();
        assert_eq!(user_of(web.current().await), ["a"]);
    }
}
