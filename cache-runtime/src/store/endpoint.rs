//! Where the cache connects and how: the Redis URLs and the TLS settings given to the
//! builder. Every `redis::Client` the cache opens (data, pub/sub wake-ups, near-cache
//! tracking, each node of a cluster) is made here, so they all use the same certificates;
//! and every URL that reaches a message is [redacted](redact_url) here first.
//!
//! TLS runs on rustls with the ring provider (no system OpenSSL). A `rediss://` URL is
//! checked against the system roots; [`Tls::root_cert`] adds a CA to them, and
//! [`Tls::client_cert`] presents a client certificate (mutual TLS).

use std::fmt;

use redis::{Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo, TlsCertificates};

use crate::error::{BackendError, Error, Result};

/// The builder's TLS settings, PEM bytes as given.
#[derive(Clone, Default)]
pub(crate) struct Tls {
    /// CA certificates trusted besides the system roots.
    pub(crate) root_cert: Option<Vec<u8>>,
    /// The client's certificate chain and private key, for mutual TLS.
    pub(crate) client_cert: Option<(Vec<u8>, Vec<u8>)>,
}

impl Tls {
    fn is_set(&self) -> bool {
        self.root_cert.is_some() || self.client_cert.is_some()
    }
}

/// Says which settings are given, never their bytes (a private key is a secret).
impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let given = |set: bool| if set { "<given>" } else { "<none>" };
        f.debug_struct("Tls")
            .field("root_cert", &given(self.root_cert.is_some()))
            .field("client_cert", &given(self.client_cert.is_some()))
            .finish()
    }
}

/// The URLs of one deployment (one standalone server, or a cluster's seed nodes) and the
/// certificates every connection to it uses.
#[derive(Clone)]
pub(crate) struct Endpoints {
    urls: Vec<String>,
    certificates: Option<TlsCertificates>,
}

impl Endpoints {
    /// Checks every URL and the TLS settings (a certificate with a plain `redis://` URL is a
    /// mistake: it would be silently unused).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] (its text redacted) for a URL that does not parse;
    /// [`Error::InvalidConfig`] for TLS settings with a plain URL, or a PEM that does not
    /// parse.
    pub(crate) fn new(urls: Vec<String>, tls: &Tls) -> Result<Self> {
        install_crypto_provider();
        let certificates = tls.is_set().then(|| TlsCertificates {
            client_tls: tls.client_cert.as_ref().map(|(cert, key)| ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: tls.root_cert.as_ref().map(|pem| with_system_roots(pem)),
        });
        let endpoints = Endpoints { urls, certificates };
        for url in &endpoints.urls {
            let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                .map_err(|source| invalid_url(url, source))?;
            let tls_url = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
            if endpoints.certificates.is_some() && !tls_url {
                return Err(Error::InvalidConfig(format!(
                    "tls_root_cert / tls_client_cert need `rediss://` URLs (TLS); got {}",
                    redact_url(url)
                )));
            }
            endpoints.client(url).map_err(|error| {
                Error::InvalidConfig(format!(
                    "the TLS certificates for {}: {error}",
                    redact_url(url)
                ))
            })?;
        }
        Ok(endpoints)
    }

    /// A client for `url` (one of [`urls`](Self::urls)), with the certificates.
    pub(crate) fn client(&self, url: &str) -> redis::RedisResult<Client> {
        match &self.certificates {
            Some(certificates) => Client::build_with_tls(url, certificates.clone()),
            None => Client::open(url),
        }
    }

    /// A client for each URL.
    pub(crate) fn clients(&self) -> Result<Vec<Client>> {
        self.urls
            .iter()
            .map(|url| self.client(url).map_err(|source| invalid_url(url, source)))
            .collect()
    }

    /// The certificates, for a cluster client (`None`: system roots only, or plain TCP).
    pub(crate) fn certificates(&self) -> Option<TlsCertificates> {
        self.certificates.clone()
    }
}

/// How to reach the node `host:port` of the cluster that `seed` belongs to: the same
/// credentials, and TLS with the same certificates when the seed uses TLS.
pub(crate) fn node(seed: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match seed.addr().clone() {
        ConnectionAddr::TcpTls { insecure, tls_params, .. } => {
            ConnectionAddr::TcpTls { host: host.to_owned(), port, insecure, tls_params }
        }
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    seed.clone().set_addr(addr)
}

/// [`Error::InvalidUrl`] for `url`, whose text is redacted.
fn invalid_url(url: &str, source: redis::RedisError) -> Error {
    Error::InvalidUrl { url: redact_url(url), source: BackendError(source) }
}

/// rustls needs one process-wide crypto provider; ring is the one this crate builds with.
/// If the application installed one already (for example aws-lc-rs, for post-quantum key
/// exchange), that one stays. Installing it here rather than leaving it to rustls keeps TLS
/// working when another crate of the application enables a second provider, with which
/// rustls could not choose by itself.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Deprecated in rustls 0.23.48 for lacking post-quantum key exchange only; ring
        // builds without a C toolchain's cmake or system OpenSSL.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// `pem` followed by the system's root certificates (as PEM): redis-rs replaces the system
/// roots with a given root certificate, and the builder's contract is to add one. A system
/// without a readable trust store still trusts `pem`.
fn with_system_roots(pem: &[u8]) -> Vec<u8> {
    let mut all = pem.to_vec();
    if !all.ends_with(b"\n") {
        all.push(b'\n');
    }
    for cert in rustls_native_certs::load_native_certs().certs {
        all.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in base64(cert.as_ref()).as_bytes().chunks(64) {
            all.extend_from_slice(line);
            all.push(b'\n');
        }
        all.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    all
}

/// Standard base64 with padding (PEM's body).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `url` with its password replaced by `***` (`redis://user:***@host`), and the values of
/// `pass` and `password` query parameters too (`redis+unix:///run/redis.sock?pass=***`):
/// the form in which a URL appears in any error, log line or `Debug` output of this crate.
///
/// Public so that an application prints its Redis URL the same way:
///
/// ```
/// assert_eq!(
///     cache_runtime::redact_url("rediss://app:s3cret@redis.internal:6380/0"),
///     "rediss://app:***@redis.internal:6380/0"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let (authority, path) = before_query.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let mut redacted = match scheme {
        Some(scheme) => format!("{scheme}://{authority}{path}"),
        None => format!("{authority}{path}"),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if matches!(name, "pass" | "password") => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        redacted = format!("{redacted}?{}", pairs.join("&"));
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("redis://:s3cret@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact_url("rediss://app:s3cret@host/2"), "rediss://app:***@host/2");
        assert_eq!(redact_url("redis://app@host"), "redis://app@host");
        assert_eq!(redact_url("redis://u:p@ss@host"), "redis://u:***@host");
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        let vectors =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg==")];
        for (plain, encoded) in vectors {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn a_bad_url_is_an_error_without_its_password() {
        let error =
            Endpoints::new(vec!["redis://app:s3cret@host:notaport".into()], &Tls::default())
                .err()
                .expect("a port that is not a number");
        let text = format!("{error} {error:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("app:***@host"), "{text}");
    }

    #[test]
    fn tls_settings_need_a_tls_url() {
        let tls = Tls { root_cert: Some(b"x".to_vec()), client_cert: None };
        let error = Endpoints::new(vec!["redis://:pw@127.0.0.1:1".into()], &tls).err().unwrap();
        assert!(
            matches!(&error, Error::InvalidConfig(why) if why.contains("rediss://")),
            "{error}"
        );
        assert!(!error.to_string().contains("pw@"), "{error}");
    }
}
