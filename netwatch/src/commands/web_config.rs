//! The web configuration file of `netwatch serve --web.config.file`: the format Prometheus
//! exporters share (exporter-toolkit's `web-config.yml`), so that one file and one habit serve
//! every exporter on a node.
//!
//! Read: `tls_server_config` with `cert_file` and `key_file` (PEM; relative paths are relative
//! to the file's directory), and `basic_auth_users`, user names to bcrypt hashes. Any other
//! key (client certificates, cipher choices, `http_server_config`) is refused by name rather
//! than silently ignored. The file is read once, at start.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use base64::Engine as _;
use serde::Deserialize;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
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
}

/// What the server does with a connection and a request: TLS or not, and who may ask.
#[derive(Clone, Default)]
pub struct WebConfig {
    pub tls: Option<TlsAcceptor>,
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
    /// Reads the file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the web config {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir).with_context(|| {
            format!(
                "web config {}: netwatch reads tls_server_config (cert_file, key_file) and \
                 basic_auth_users",
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
        let tls = match file.tls_server_config {
            None => None,
            Some(t) => Some(acceptor(&dir.join(t.cert_file), &dir.join(t.key_file))?),
        };
        Ok(Self {
            tls,
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

/// A TLS acceptor with the certificate chain and key of these PEM files (HTTP/1.1 offered by
/// ALPN; TLS 1.2 and 1.3).
fn acceptor(cert_file: &Path, key_file: &Path) -> anyhow::Result<TlsAcceptor> {
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
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not make a TLS identity")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
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
}
