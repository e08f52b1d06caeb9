//! [`TlsOptions`]: the TLS settings every Redis backend's builder shares (cargo feature `tls`)
//! — which certificate authorities to trust, and a client certificate for servers that ask
//! for one — and how they are applied to a `rediss://` connection.
//!
//! Without options, a `rediss://` connection trusts the public certificate authorities
//! (webpki roots), which is what managed Redis services present. A server with a certificate
//! from a private authority needs that authority's certificate: `tls_root_certificates`.

use std::fmt;

use redis::ConnectionInfo;

use crate::error::Error;

/// The TLS settings of one backend.
#[derive(Clone, Default)]
pub(super) struct TlsOptions {
    /// PEM: the authorities to trust instead of the public ones.
    pub(super) roots: Option<Vec<u8>>,
    /// PEM: a certificate chain and its private key, for servers that verify clients.
    pub(super) client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Certificates are not secret, the key is; neither is worth printing.
        f.debug_struct("TlsOptions")
            .field("root_certificates", &self.roots.as_ref().map(|_| "<set>"))
            .field("client_certificate", &self.client.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl TlsOptions {
    /// Whether any option is set.
    pub(super) fn is_set(&self) -> bool {
        self.roots.is_some() || self.client.is_some()
    }

    /// Check what can be checked before connecting: each PEM holds what it should.
    fn check(&self) -> Result<(), Error> {
        // "-----BEGIN CERTIFICATE-----"; keys are "-----BEGIN [RSA |EC ]PRIVATE KEY-----".
        let holds = |pem: &[u8], what: &str| {
            let pem = String::from_utf8_lossy(pem);
            pem.contains("-----BEGIN ") && pem.contains(&format!("{what}-----"))
        };
        if let Some(roots) = &self.roots
            && !holds(roots, "CERTIFICATE")
        {
            return Err(invalid(
                "no PEM certificate (`-----BEGIN CERTIFICATE-----`) in the root certificates; pass the contents of the CA's .pem file, not its path",
            ));
        }
        if let Some((chain, key)) = &self.client {
            if !holds(chain, "CERTIFICATE") {
                return Err(invalid(
                    "no PEM certificate (`-----BEGIN CERTIFICATE-----`) in the client certificate; pass the contents of its .pem file, not its path",
                ));
            }
            if !holds(key, "PRIVATE KEY") {
                return Err(invalid(
                    "no PEM private key (`-----BEGIN PRIVATE KEY-----`) in the client key; pass the contents of its .pem file, not its path",
                ));
            }
        }
        Ok(())
    }

    /// The options in redis-rs's form, if any is set.
    #[cfg(feature = "tls")]
    pub(super) fn certificates(&self) -> Option<redis::TlsCertificates> {
        self.is_set().then(|| redis::TlsCertificates {
            client_tls: self.client.as_ref().map(|(chain, key)| redis::ClientTlsConfig {
                client_cert: chain.clone(),
                client_key: key.clone(),
            }),
            root_cert: self.roots.clone(),
        })
    }

    /// `info` (of the URL shown as `shown`) ready to connect: see [`prepare`](Self::prepare);
    /// then with these options applied.
    pub(super) fn apply(&self, info: ConnectionInfo, shown: &str) -> Result<ConnectionInfo, Error> {
        let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        self.prepare(tls, shown)?;
        if !self.is_set() {
            return Ok(info);
        }
        self.apply_certificates(info)
    }

    /// [`prepare`](Self::prepare) for a cluster's seed nodes (shown as `shown`), which
    /// redis-rs's cluster client parses itself; the options go to it through
    /// [`certificates`](Self::certificates).
    #[cfg(feature = "redis-cluster")]
    pub(super) fn prepare_nodes(&self, nodes: &[String], shown: &str) -> Result<(), Error> {
        self.prepare(nodes.iter().any(|node| node.starts_with("rediss://")), shown)
    }

    /// Before connecting to a URL (shown as `shown`) that uses TLS or not: the options are
    /// well-formed, options for a URL without TLS are an error, and a URL with TLS has a
    /// crypto provider in place (see [`ensure_crypto_provider`]).
    fn prepare(&self, tls: bool, shown: &str) -> Result<(), Error> {
        self.check()?;
        if tls {
            ensure_crypto_provider();
        } else if self.is_set() {
            return Err(not_tls(shown));
        }
        Ok(())
    }

    #[cfg(feature = "tls")]
    fn apply_certificates(&self, info: ConnectionInfo) -> Result<ConnectionInfo, Error> {
        let certificates = self.certificates().ok_or_else(|| invalid("no TLS option is set"))?;
        let client =
            redis::Client::build_with_tls(info, certificates).map_err(|err| invalid(&err.to_string()))?;
        Ok(client.get_connection_info().clone())
    }

    #[cfg(not(feature = "tls"))]
    fn apply_certificates(&self, _info: ConnectionInfo) -> Result<ConnectionInfo, Error> {
        // The options can only be set with the feature on.
        Err(invalid("TLS needs dlock's cargo feature `tls`"))
    }
}

/// Make sure rustls has a process-wide crypto provider before a TLS connection is made: the
/// application's, if it installed one, otherwise `ring`'s (which the `tls` feature turns on;
/// redis-rs turns on none). rustls picks a provider by itself only when exactly one is on,
/// and panics otherwise — as in an application whose other dependencies turn on `aws-lc-rs`.
fn ensure_crypto_provider() {
    // `install_default` never replaces a provider already in place (the application's, or
    // one another connection installed): it then fails, and that is fine.
    #[cfg(feature = "tls")]
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// TLS options were given for a URL that does not use TLS.
fn not_tls(shown: &str) -> Error {
    Error::InvalidInput {
        what: "Redis URL",
        reason: format!(
            "TLS certificates were given, but `{shown}` does not use TLS; use a rediss:// URL (rediss-cluster:// for a cluster)"
        ),
    }
}

fn invalid(reason: &str) -> Error {
    Error::InvalidInput { what: "TLS certificates", reason: reason.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &[u8] = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &[u8] = b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    #[test]
    fn a_path_instead_of_pem_is_invalid_input_that_says_so() {
        let options = TlsOptions { roots: Some(b"/etc/ssl/ca.pem".to_vec()), client: None };
        let err = options.check().expect_err("a path is not PEM");
        assert!(matches!(err, Error::InvalidInput { what: "TLS certificates", .. }), "{err:?}");
        assert!(err.to_string().contains("not its path"), "{err}");
        let options = TlsOptions { roots: None, client: Some((CERT.to_vec(), b"key.pem".to_vec())) };
        assert!(options.check().expect_err("no key").to_string().contains("private key"));
        let options = TlsOptions { roots: Some(CERT.to_vec()), client: Some((CERT.to_vec(), KEY.to_vec())) };
        assert!(options.check().is_ok());
    }

    #[test]
    fn options_for_a_plain_url_are_invalid_input() {
        let options = TlsOptions { roots: Some(CERT.to_vec()), client: None };
        let info = redis::IntoConnectionInfo::into_connection_info("redis://127.0.0.1:6379").expect("a URL");
        let err = options.apply(info, "redis://127.0.0.1:6379").expect_err("not TLS");
        assert!(err.to_string().contains("rediss://"), "{err}");
    }

    #[test]
    fn no_options_leave_the_url_as_it_is() {
        let info = redis::IntoConnectionInfo::into_connection_info("redis://127.0.0.1:6379").expect("a URL");
        let applied = TlsOptions::default().apply(info.clone(), "").expect("nothing to apply");
        assert_eq!(applied.addr(), info.addr());
        assert!(
            !format!("{:?}", TlsOptions { roots: None, client: Some((CERT.to_vec(), KEY.to_vec())) })
                .contains("MIIE")
        );
    }
}
