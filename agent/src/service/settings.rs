//! The validated config mapped onto the settings of each part (store, links, uplink).
//! Pure functions: `labagent check-config` and `run` see the same values.

use labagent_config as cfg;

use crate::source::{self, Backoff, Endpoint, LinkOptions, SerialSettings, TcpOptions};
use crate::store::{StoreOptions, WhenFull};
use crate::uplink::{self, AuthSettings, UplinkSettings};

pub fn store_options(b: &cfg::Buffer) -> StoreOptions {
    StoreOptions {
        max_bytes: b.max_bytes,
        min_free: b.min_free,
        when_full: match b.when_full {
            cfg::WhenFull::Refuse => WhenFull::Refuse,
            cfg::WhenFull::DropOldest => WhenFull::DropOldest,
        },
        keep_delivered: b.keep_delivered,
        // Order reports travel the durable upload path (`#order-reports`), whichever
        // uplink: both deliver them.
        order_reports: true,
        ..StoreOptions::default()
    }
}

pub fn endpoint(t: &cfg::Transport) -> Endpoint {
    match t {
        cfg::Transport::Serial {
            path,
            baud,
            data_bits,
            parity,
            stop_bits,
            flow_control,
        } => Endpoint::Serial(SerialSettings {
            path: path.clone(),
            baud: *baud,
            data_bits: match data_bits {
                cfg::DataBits::Seven => source::DataBits::Seven,
                cfg::DataBits::Eight => source::DataBits::Eight,
            },
            parity: match parity {
                cfg::Parity::None => source::Parity::None,
                cfg::Parity::Even => source::Parity::Even,
                cfg::Parity::Odd => source::Parity::Odd,
            },
            stop_bits: match stop_bits {
                cfg::StopBits::One => source::StopBits::One,
                cfg::StopBits::Two => source::StopBits::Two,
            },
            flow_control: match flow_control {
                cfg::FlowControl::None => source::FlowControl::None,
                cfg::FlowControl::Software => source::FlowControl::Software,
                cfg::FlowControl::Hardware => source::FlowControl::Hardware,
            },
        }),
        cfg::Transport::Listen(addr) => Endpoint::Listen(*addr),
        cfg::Transport::Connect(target) => Endpoint::Connect(target.clone()),
    }
}

/// Link options: HL7 channels take `max_connections` and `idle_timeout` from the config;
/// ASTM and raw instruments may stay silent for hours, so their connections never time out.
pub fn link_options(c: &cfg::Channel) -> LinkOptions {
    let mut tcp = TcpOptions::default();
    match &c.settings {
        cfg::ProtocolSettings::Hl7(h) => {
            tcp.max_connections = h.max_connections as usize;
            tcp.idle_timeout = (!h.idle_timeout.is_zero()).then_some(h.idle_timeout);
        }
        cfg::ProtocolSettings::Astm(_) | cfg::ProtocolSettings::Raw(_) => tcp.idle_timeout = None,
    }
    LinkOptions {
        backoff: Backoff::with_random_seed(),
        tcp,
    }
}

/// `[uplink]` for the HTTP uplink; `None` when the uplink is not HTTP.
pub fn http_uplink(c: &cfg::Config) -> Option<(UplinkSettings, AuthSettings)> {
    let u = &c.uplink;
    let url = u.url.clone()?;
    let settings = UplinkSettings {
        url,
        format: match u.format {
            cfg::Format::Raw => uplink::Format::Raw,
            cfg::Format::Json => uplink::Format::Json,
            cfg::Format::Fhir => uplink::Format::Fhir,
        },
        batch_max: u.batch_max as usize,
        timeout: u.timeout,
        ca_file: u.ca_file.clone(),
        client_cert: u.client_cert.clone(),
        client_key: u.client_key.clone(),
        allow_plain_http: u.allow_plain_http,
        agent_id: c.agent.id.clone(),
        fhir: u.fhir.clone(),
        orders_url: u.orders_url.clone(),
    };
    Some((settings, auth_settings(&u.auth)))
}

pub fn auth_settings(a: &cfg::Auth) -> AuthSettings {
    AuthSettings {
        method: match a.method {
            cfg::AuthMethod::ClientCredentials => uplink::AuthMethod::ClientCredentials,
            cfg::AuthMethod::Basic => uplink::AuthMethod::Basic,
            cfg::AuthMethod::None => uplink::AuthMethod::None,
        },
        token_url: a.token_url.clone().unwrap_or_default(),
        client_id: a.client_id.clone().unwrap_or_default(),
        secret: a.secret.clone(),
        scope: a.scope.clone(),
        client_auth: match a.client_auth {
            cfg::ClientAuth::Basic => uplink::ClientAuth::Basic,
            cfg::ClientAuth::Post => uplink::ClientAuth::Post,
        },
        strict_scope: a.strict_scope,
        fallback: match a.fallback {
            cfg::Fallback::None => uplink::Fallback::None,
            cfg::Fallback::Basic => uplink::Fallback::Basic,
        },
        ..AuthSettings::none()
    }
}
