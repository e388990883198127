// Test certificates, made fresh by each test that serves TLS. Shared by the root tests of
// `netwatch serve` and the unit tests of its HTTP server (`netwatch/src/commands/http.rs`
// includes this file with `include!`, hence no inner doc comment here).

use std::path::{Path, PathBuf};

/// A CA and a server certificate it signed for 127.0.0.1 and `localhost`, written to `dir`:
/// (ca.pem, server.pem, server.key); and a client certificate it signed, `client.pem` and
/// `client.key` in `dir`.
pub fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Not the default name the server's certificate gets too: OpenSSL would take the
    // server's for self-signed.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "netwatch test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "prometheus");
    let client = client.signed_by(&client_key, &issuer).unwrap();
    std::fs::write(dir.join("client.pem"), client.pem()).unwrap();
    std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();
    paths
}
