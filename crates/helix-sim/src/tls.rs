//! HTTPS for the simulator: a certificate authority and a server certificate
//! for `127.0.0.1` and `localhost`, both made at start with rcgen, and a rustls
//! server configuration offering HTTP/2 and HTTP/1.1 by ALPN (or HTTP/1.1 only).
//!
//! The CA certificate is written to a PEM file a client can be told to trust
//! (twitch_sync's `twitch_sync.extra_ca_file`), the way a TLS-inspecting proxy's
//! CA would be: the server certificate itself is an ordinary leaf signed by it.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which application protocols the TLS server offers by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alpn {
    /// `h2` and `http/1.1`, preferring HTTP/2 (as Twitch's servers do).
    #[default]
    H2AndHttp1,
    /// `http/1.1` only: for clients' fallback path.
    Http1Only,
}

/// The certificates of one simulator and the server configuration using them.
pub struct TlsSetup {
    pub config: Arc<rustls::ServerConfig>,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// Where the CA certificate was written (removed when the simulator stops).
    pub ca_file: PathBuf,
}

fn err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Makes a CA and a server certificate for 127.0.0.1 / localhost, writes the
/// CA's PEM to `ca_file`, and builds the rustls server configuration.
pub fn setup(alpn: Alpn, ca_file: &Path) -> std::io::Result<TlsSetup> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "helix-sim test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(err)?).map_err(err)?;

    let mut leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .map_err(err)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "helix-sim");
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().map_err(err)?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca).map_err(err)?;

    let ca_pem = ca.pem();
    std::fs::write(ca_file, &ca_pem)?;

    let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone(), ca.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(err)?;
    config.alpn_protocols = match alpn {
        Alpn::H2AndHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Alpn::Http1Only => vec![b"http/1.1".to_vec()],
    };
    Ok(TlsSetup {
        config: Arc::new(config),
        ca_pem,
        ca_file: ca_file.to_path_buf(),
    })
}
