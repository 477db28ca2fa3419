//! Broker URL, TLS and login: everything `rumqttc::MqttOptions` is built from.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

use super::{MqttError, MqttSettings};
use crate::uplink::auth::{Authenticator, Credential};
use crate::uplink::tls::{native_roots, read_pem_certs, TlsError};
use crate::uplink::{AuthError, AuthMode, Secret};

/// A broker address parsed from `mqtt://host[:port]` or `mqtts://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// Parses the broker URL; plain `mqtt://` only with `allow_plain`.
pub fn parse_url(url: &str, allow_plain: bool) -> Result<BrokerUrl, MqttError> {
    let bad = || MqttError::BadUrl(url.to_string());
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(bad());
    };
    if !tls && !allow_plain {
        return Err(MqttError::PlainMqtt(url.to_string()));
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => default_port,
            None => return Err(bad()),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok(BrokerUrl { tls, host, port })
}

/// The rustls client configuration: system roots plus `ca_file`, optional client
/// certificate; the ring provider passed explicitly (one provider for the whole binary).
pub fn tls_client_config(
    ca_file: Option<&Path>,
    client_cert: Option<&Path>,
    client_key: Option<&Path>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(native_roots());
    if let Some(path) = ca_file {
        for c in read_pem_certs(path, "ca_file")? {
            roots.add(c).map_err(|e| TlsError::File {
                kind: "ca_file",
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::File {
        kind: "TLS provider",
        path: Default::default(),
        detail: e.to_string(),
    })?
    .with_root_certificates(roots);
    match (client_cert, client_key) {
        (Some(c), Some(k)) => {
            let chain = read_pem_certs(c, "client_cert")?;
            let key = PrivateKeyDer::from_pem_file(k).map_err(|e| TlsError::File {
                kind: "client_key",
                path: k.to_owned(),
                detail: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::File {
                    kind: "client_cert",
                    path: c.to_owned(),
                    detail: e.to_string(),
                })
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(TlsError::HalfClientCert),
    }
}

/// The MQTT options for `settings` (credentials are set before each connection attempt).
pub fn mqtt_options(s: &MqttSettings) -> Result<MqttOptions, MqttError> {
    let url = parse_url(&s.url, s.allow_plain)?;
    let mut o = MqttOptions::new(s.client_id.clone(), url.host.clone(), url.port);
    if url.tls {
        let tls = tls_client_config(
            s.ca_file.as_deref(),
            s.client_cert.as_deref(),
            s.client_key.as_deref(),
        )?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    }
    // A persistent session under a stable client id: the broker keeps our subscription and
    // queues orders while we are away.
    o.set_clean_session(false);
    o.set_manual_acks(true);
    o.set_inflight(s.window);
    o.set_request_channel_capacity(s.window as usize + 256);
    o.set_max_packet_size(s.max_packet, s.max_packet);
    o.set_keep_alive(s.timeout.max(Duration::from_secs(1)));
    Ok(o)
}

/// What the broker sees as username / password.
pub enum Login {
    None,
    /// `method = basic`: the client id and secret.
    Basic {
        user: String,
        secret: Secret,
    },
    /// `method = client_credentials`: the client id and the current access token.
    Token {
        user: String,
        secret: Option<Secret>,
        auth: Arc<Authenticator>,
    },
}

impl Login {
    /// Username and password for the next connection attempt (blocking: may fetch a token).
    pub fn credentials(&self) -> Result<Option<(String, Secret)>, AuthError> {
        match self {
            Login::None => Ok(None),
            Login::Basic { user, secret } => Ok(Some((user.clone(), secret.clone()))),
            Login::Token { user, secret, auth } => match auth.credential()? {
                Credential::Bearer(v) => {
                    let token = v.expose().strip_prefix("Bearer ").unwrap_or(v.expose());
                    Ok(Some((user.clone(), Secret::new(token))))
                }
                // The token endpoint refused the grant and `fallback = "basic"`.
                Credential::Basic(_) => Ok(Some((
                    user.clone(),
                    secret.clone().unwrap_or_else(|| Secret::new("")),
                ))),
                Credential::None => Ok(None),
            },
        }
    }

    /// The broker refused `password`: a token is forgotten so the next attempt gets a new one.
    pub fn refused(&self, password: &Secret) {
        if let Login::Token { auth, .. } = self {
            auth.invalidate(&Credential::Bearer(Secret::new(format!(
                "Bearer {}",
                password.expose()
            ))));
        }
    }

    /// Expiry of the token in use, if any.
    pub fn token_expiry(&self) -> Option<std::time::SystemTime> {
        match self {
            Login::Token { auth, .. } => auth.token_expiry(),
            _ => None,
        }
    }

    pub fn mode(&self) -> AuthMode {
        match self {
            Login::None => AuthMode::None,
            Login::Basic { .. } => AuthMode::Basic,
            Login::Token { auth, .. } => auth.mode(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("mqtts://broker.example.org", false).unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (true, "broker.example.org", 8883)
        );
        let u = parse_url("mqtt://127.0.0.1:1999", true).unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 1999));
        let u = parse_url("mqtts://[::1]:8884/", false).unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8884));
        assert!(matches!(
            parse_url("mqtt://h:1883", false),
            Err(MqttError::PlainMqtt(_))
        ));
        for bad in [
            "http://h",
            "mqtts://",
            "mqtts://h:x",
            "mqtts://u:p@h",
            "mqtts://h:0",
        ] {
            assert!(parse_url(bad, true).is_err(), "{bad}");
        }
    }
}
