//! From [`RawConfig`] to [`Config`]: defaults filled in, every value checked for meaning.
//! All problems are collected (see [`Ctx`]); a `Config` exists only when there are none.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;

use serde_spanned::Spanned;

use crate::check::{valid_id, Ctx, ID_EXPECTED};
use crate::defaults as d;
use crate::model::{Agent, Auth, AuthMethod, Buffer, Config, Mqtt, Uplink, UplinkKind};
use crate::schema::{RawAgent, RawAuth, RawConfig, RawMqtt, RawUplink};
use crate::secret::{
    read_secret_file, Secret, SecretSource, CREDENTIAL_NAME, ENV_CREDENTIALS_DIRECTORY, ENV_SECRET,
};
use crate::LoadOptions;

const TOP: Range<usize> = 0..0;

pub fn validate(ctx: &mut Ctx<'_>, raw: &RawConfig, opts: &LoadOptions) -> Option<Config> {
    let agent = agent(ctx, raw.agent.as_ref());
    let buffer = buffer(ctx, raw);
    let uplink = uplink(ctx, raw.uplink.as_ref(), &agent.id, opts);
    let channels = crate::channel::channels(ctx, &raw.channel);
    let is_fhir = uplink
        .as_ref()
        .is_some_and(|u| u.format == crate::model::Format::Fhir);
    let fhir = fhir_channels(ctx, raw, is_fhir);
    let remote = crate::remote::remote(
        ctx,
        raw.remote.as_ref(),
        uplink.as_ref().map(|u| u.kind),
        uplink.as_ref().is_some_and(|u| u.allow_plain_http),
    );
    let mut uplink = uplink?;
    uplink.fhir = fhir;
    unfillable_query_channels(ctx, raw, &uplink);
    if !ctx.errors.is_empty() {
        return None;
    }
    Some(Config {
        agent,
        buffer,
        uplink,
        channels,
        remote,
    })
}

fn agent(ctx: &mut Ctx<'_>, raw: Option<&Spanned<RawAgent>>) -> Agent {
    let Some(raw) = raw else {
        ctx.error(
            &TOP,
            "agent.id",
            "is required: add an [agent] section with id = \"...\"",
        );
        return Agent {
            id: String::new(),
            state_dir: d::STATE_DIR.into(),
            log: d::LOG,
            status_socket: d::STATUS_SOCKET.into(),
            metrics: None,
        };
    };
    let section = raw.span();
    let a = raw.get_ref();
    let id = match &a.id {
        None => {
            ctx.error(
                &section,
                "agent.id",
                "is required (names this host upstream)",
            );
            String::new()
        }
        Some(id) => {
            if !valid_id(id.get_ref()) {
                ctx.error(
                    &id.span(),
                    "agent.id",
                    format!("{ID_EXPECTED}, got \"{}\"", id.get_ref()),
                );
            }
            id.get_ref().clone()
        }
    };
    let state_dir = a.state_dir.as_ref().map_or_else(
        || d::STATE_DIR.into(),
        |p| ctx.abs_path(p, "agent.state_dir"),
    );
    let status_socket = a.status_socket.as_ref().map_or_else(
        || d::STATUS_SOCKET.into(),
        |p| ctx.abs_path(p, "agent.status_socket"),
    );
    let metrics = a
        .metrics
        .as_ref()
        .and_then(|m| match m.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                ctx.error(
                    &m.span(),
                    "agent.metrics",
                    format!(
                        "expected an address:port like \"127.0.0.1:9464\", got \"{}\"",
                        m.get_ref()
                    ),
                );
                None
            }
        });
    Agent {
        id,
        state_dir,
        log: ctx.value(&a.log, d::LOG),
        status_socket,
        metrics,
    }
}

fn buffer(ctx: &mut Ctx<'_>, raw: &RawConfig) -> Buffer {
    let Some(b) = raw.buffer.as_ref().map(Spanned::get_ref) else {
        return Buffer {
            max_bytes: d::MAX_BYTES,
            min_free: d::MIN_FREE,
            when_full: d::WHEN_FULL,
            keep_delivered: d::KEEP_DELIVERED,
            orders_keep: d::ORDERS_KEEP,
        };
    };
    Buffer {
        max_bytes: ctx.size(&b.max_bytes, "buffer.max_bytes", d::MAX_BYTES, true),
        min_free: ctx.size(&b.min_free, "buffer.min_free", d::MIN_FREE, false),
        when_full: ctx.value(&b.when_full, d::WHEN_FULL),
        // Zero is meaningful: delivered messages are not kept (no replay, no dedup window).
        keep_delivered: ctx.duration(
            &b.keep_delivered,
            "buffer.keep_delivered",
            d::KEEP_DELIVERED,
            false,
        ),
        orders_keep: ctx.duration(&b.orders_keep, "buffer.orders_keep", d::ORDERS_KEEP, true),
    }
}

fn uplink(
    ctx: &mut Ctx<'_>,
    raw: Option<&Spanned<RawUplink>>,
    agent_id: &str,
    opts: &LoadOptions,
) -> Option<Uplink> {
    let Some(raw) = raw else {
        ctx.error(
            &TOP,
            "uplink.kind",
            "is required: add an [uplink] section with kind = \"http\" or \"mqtt\"",
        );
        return None;
    };
    let section = raw.span();
    let u = raw.get_ref();
    let kind = match &u.kind {
        Some(k) => Some(*k.get_ref()),
        None => {
            ctx.error(&section, "uplink.kind", "is required: \"http\" or \"mqtt\"");
            None
        }
    };
    let allow_plain_http = ctx.value(&u.allow_plain_http, d::ALLOW_PLAIN_HTTP);
    let url = match (&u.url, kind) {
        (Some(url), Some(UplinkKind::Http)) => {
            ctx.url(
                url,
                "uplink.url",
                "https",
                "http",
                allow_plain_http,
                "uplink.allow_plain_http",
            );
            Some(url.get_ref().clone())
        }
        (Some(url), Some(UplinkKind::Mqtt)) => {
            ctx.error(
                &url.span(),
                "uplink.url",
                "is for kind = \"http\"; the broker URL goes in [uplink.mqtt] url",
            );
            None
        }
        (None, Some(UplinkKind::Http)) => {
            ctx.error(
                &section,
                "uplink.url",
                "is required for kind = \"http\" (an https:// URL)",
            );
            None
        }
        _ => None,
    };
    let client_cert = ctx.existing_file(&u.client_cert, "uplink.client_cert");
    let client_key = ctx.existing_file(&u.client_key, "uplink.client_key");
    match (&u.client_cert, &u.client_key) {
        (Some(c), None) => ctx.error(
            &c.span(),
            "uplink.client_cert",
            "needs uplink.client_key too (mutual TLS takes both)",
        ),
        (None, Some(k)) => ctx.error(
            &k.span(),
            "uplink.client_key",
            "needs uplink.client_cert too (mutual TLS takes both)",
        ),
        _ => {}
    }
    let mqtt = match (kind, &u.mqtt) {
        (Some(UplinkKind::Mqtt), Some(m)) => Some(mqtt(ctx, m, agent_id)),
        (Some(UplinkKind::Mqtt), None) => {
            ctx.error(
                &section,
                "uplink.mqtt.url",
                "is required for kind = \"mqtt\": add [uplink.mqtt] with url = \"mqtts://...\"",
            );
            None
        }
        (Some(UplinkKind::Http), Some(m)) => {
            ctx.warn(
                &m.span(),
                "uplink.mqtt",
                "is ignored: uplink.kind is \"http\"",
            );
            None
        }
        _ => None,
    };
    let auth = auth(ctx, u.auth.as_ref(), &section, allow_plain_http, opts);
    if let (Some(f), Some(UplinkKind::Mqtt)) = (&u.format, kind) {
        if *f.get_ref() == crate::model::Format::Fhir {
            ctx.error(
                &f.span(),
                "uplink.format",
                "\"fhir\" posts transaction Bundles over HTTP: it needs kind = \"http\" and url = the FHIR R4 base (https://.../fhir/R4)",
            );
        }
    }
    let query_url = feed_url(
        ctx,
        &u.query_url,
        "uplink.query_url",
        kind,
        allow_plain_http,
    );
    let orders_url = feed_url(
        ctx,
        &u.orders_url,
        "uplink.orders_url",
        kind,
        allow_plain_http,
    );
    if let (Some(p), None) = (&u.orders_poll, &u.orders_url) {
        ctx.warn(
            &p.span(),
            "uplink.orders_poll",
            "is ignored without uplink.orders_url (it paces the HTTPS order feed)",
        );
    }
    let orders_poll = ctx.duration(&u.orders_poll, "uplink.orders_poll", d::ORDERS_POLL, true);
    Some(Uplink {
        kind: kind?,
        url,
        format: ctx.value(&u.format, d::FORMAT),
        batch_max: ctx.int(&u.batch_max, "uplink.batch_max", d::BATCH_MAX, 1, 100_000),
        timeout: ctx.duration(&u.timeout, "uplink.timeout", d::TIMEOUT, true),
        ca_file: ctx.existing_file(&u.ca_file, "uplink.ca_file"),
        client_cert,
        client_key,
        allow_plain_http,
        auth,
        mqtt,
        query_url,
        orders_url,
        orders_poll,
        fhir: Default::default(),
    })
}

/// `query_url` / `orders_url`: URLs like `url` for kind = "http"; with MQTT the same
/// traffic has topics of its own, which the error names.
fn feed_url(
    ctx: &mut Ctx<'_>,
    field: &Option<Spanned<String>>,
    key: &str,
    kind: Option<UplinkKind>,
    allow_plain_http: bool,
) -> Option<String> {
    let f = field.as_ref()?;
    match kind {
        Some(UplinkKind::Mqtt) => {
            let instead = if key == "uplink.query_url" {
                "host queries are published to {prefix}/{agent}/{channel}/queries and answered on {prefix}/{agent}/{channel}/answers/{id}"
            } else {
                "orders arrive on {prefix}/{agent}/{channel}/orders ([uplink.mqtt] orders = true)"
            };
            ctx.error(
                &f.span(),
                key,
                format!("is for kind = \"http\"; with kind = \"mqtt\" {instead}"),
            );
            None
        }
        _ => {
            ctx.url(
                f,
                key,
                "https",
                "http",
                allow_plain_http,
                "uplink.allow_plain_http",
            );
            Some(f.get_ref().clone())
        }
    }
}

/// Warns about a `orders = "query"` channel that no order can ever reach.
fn unfillable_query_channels(ctx: &mut Ctx<'_>, raw: &RawConfig, uplink: &Uplink) {
    let fed = uplink.orders_url.is_some() || uplink.mqtt.as_ref().is_some_and(|m| m.orders);
    if fed {
        return;
    }
    for ch in &raw.channel {
        let c = ch.get_ref();
        let Some(o) = c.orders.as_ref() else { continue };
        if *o.get_ref() != crate::model::OrderMode::Query {
            continue;
        }
        let prefix = match &c.name {
            Some(n) => format!("channel \"{}\"", n.get_ref()),
            None => "channel".to_owned(),
        };
        ctx.warn(
            &o.span(),
            &format!("{prefix}.orders"),
            "is \"query\", but no orders can reach the cache: set [uplink] orders_url (http) or [uplink.mqtt] orders = true; until then every host query is answered from query_url or with \"nothing known\"",
        );
    }
}

/// The FHIR keys of every named channel (see `fhir.rs` for which are kept).
fn fhir_channels(
    ctx: &mut Ctx<'_>,
    raw: &RawConfig,
    all: bool,
) -> std::collections::BTreeMap<String, crate::fhir::ChannelFhir> {
    let mut out = std::collections::BTreeMap::new();
    for ch in &raw.channel {
        let Some(name) = ch.get_ref().name.as_ref().map(|n| n.get_ref().clone()) else {
            continue;
        };
        let prefix = format!("channel \"{name}\"");
        let f = crate::fhir::channel(ctx, ch, &|key: &str| format!("{prefix}.{key}"));
        if all || !f.is_default() {
            out.entry(name).or_insert(f);
        }
    }
    out
}

fn mqtt(ctx: &mut Ctx<'_>, raw: &Spanned<RawMqtt>, agent_id: &str) -> Mqtt {
    let m = raw.get_ref();
    let allow_plain_mqtt = ctx.value(&m.allow_plain_mqtt, d::ALLOW_PLAIN_MQTT);
    let url = match &m.url {
        Some(url) => {
            ctx.url(
                url,
                "uplink.mqtt.url",
                "mqtts",
                "mqtt",
                allow_plain_mqtt,
                "uplink.mqtt.allow_plain_mqtt",
            );
            url.get_ref().clone()
        }
        None => {
            ctx.error(
                &raw.span(),
                "uplink.mqtt.url",
                "is required for kind = \"mqtt\" (an mqtts:// URL)",
            );
            String::new()
        }
    };
    let client_id = ctx.value(&m.client_id, agent_id.to_owned());
    if let Some(c) = &m.client_id {
        if c.get_ref().is_empty() {
            ctx.error(&c.span(), "uplink.mqtt.client_id", "must not be empty");
        }
    }
    let topic_prefix = ctx.value(&m.topic_prefix, d::TOPIC_PREFIX.to_owned());
    if let Some(t) = &m.topic_prefix {
        let p = t.get_ref();
        if p.is_empty() || p.contains(['+', '#']) || p.starts_with('/') || p.ends_with('/') {
            ctx.error(&t.span(), "uplink.mqtt.topic_prefix", format!(
                "expected a topic prefix without wildcards (+ #) or leading/trailing '/', got \"{p}\""
            ));
        }
    }
    if let Some(q) = &m.qos {
        if *q.get_ref() != 1 {
            ctx.error(
                &q.span(),
                "uplink.mqtt.qos",
                format!(
                    "must be 1 (the inbox is released on PUBACK), got {}",
                    q.get_ref()
                ),
            );
        }
    }
    Mqtt {
        url,
        allow_plain_mqtt,
        client_id,
        topic_prefix,
        orders: ctx.value(&m.orders, d::ORDERS),
        qos: d::QOS,
    }
}

fn auth(
    ctx: &mut Ctx<'_>,
    raw: Option<&Spanned<RawAuth>>,
    uplink_span: &Range<usize>,
    allow_plain_http: bool,
    opts: &LoadOptions,
) -> Auth {
    let empty = RawAuth {
        method: None,
        token_url: None,
        client_id: None,
        client_secret_file: None,
        client_secret: None,
        scope: None,
        client_auth: None,
        strict_scope: None,
        fallback: None,
    };
    let section = raw.map_or_else(|| uplink_span.clone(), Spanned::span);
    let a = raw.map_or(&empty, Spanned::get_ref);
    let method = ctx.value(&a.method, d::AUTH_METHOD);
    let method_span = a
        .method
        .as_ref()
        .map_or_else(|| section.clone(), Spanned::span);
    let needs_id = method != AuthMethod::None;
    let token_url = match (&a.token_url, method) {
        (Some(t), AuthMethod::ClientCredentials) => {
            ctx.url(
                t,
                "uplink.auth.token_url",
                "https",
                "http",
                allow_plain_http,
                "uplink.allow_plain_http",
            );
            Some(t.get_ref().clone())
        }
        (None, AuthMethod::ClientCredentials) => {
            ctx.error(
                &method_span,
                "uplink.auth.token_url",
                "is required for method = \"client_credentials\"",
            );
            None
        }
        (Some(t), _) => {
            ctx.warn(
                &t.span(),
                "uplink.auth.token_url",
                format!("is ignored with method = \"{method}\""),
            );
            None
        }
        (None, _) => None,
    };
    let client_id = match &a.client_id {
        Some(c) if needs_id => {
            if c.get_ref().is_empty() {
                ctx.error(&c.span(), "uplink.auth.client_id", "must not be empty");
            }
            Some(c.get_ref().clone())
        }
        None if needs_id => {
            ctx.error(
                &method_span,
                "uplink.auth.client_id",
                format!("is required for method = \"{method}\""),
            );
            None
        }
        Some(c) => {
            ctx.warn(
                &c.span(),
                "uplink.auth.client_id",
                "is ignored with method = \"none\"",
            );
            None
        }
        None => None,
    };
    let (secret, secret_source) = if needs_id {
        match resolve_secret(ctx, a, &method_span, method, opts) {
            Some((s, src)) => (Some(s), Some(src)),
            None => (None, None),
        }
    } else {
        for (f, key) in [
            (&a.client_secret_file, "uplink.auth.client_secret_file"),
            (&a.client_secret, "uplink.auth.client_secret"),
        ] {
            if let Some(f) = f {
                ctx.warn(&f.span(), key, "is ignored with method = \"none\"");
            }
        }
        (None, None)
    };
    Auth {
        method,
        token_url,
        client_id,
        secret,
        secret_source,
        scope: a.scope.as_ref().map(|s| s.get_ref().clone()),
        client_auth: ctx.value(&a.client_auth, d::CLIENT_AUTH),
        strict_scope: ctx.value(&a.strict_scope, d::STRICT_SCOPE),
        fallback: ctx.value(&a.fallback, d::FALLBACK),
    }
}

/// Finds the one secret source; two or none are errors (see [`crate::secret`]).
fn resolve_secret(
    ctx: &mut Ctx<'_>,
    a: &RawAuth,
    method_span: &Range<usize>,
    method: AuthMethod,
    opts: &LoadOptions,
) -> Option<(Secret, SecretSource)> {
    let env_secret = (opts.env)(ENV_SECRET).filter(|v| !v.is_empty());
    let cred_path = (opts.env)(ENV_CREDENTIALS_DIRECTORY)
        .filter(|v| !v.is_empty())
        .map(|dir| PathBuf::from(dir).join(CREDENTIAL_NAME))
        .filter(|p| p.exists());
    let mut present: Vec<String> = Vec::new();
    if let Some(f) = &a.client_secret_file {
        present.push(format!("client_secret_file ({})", f.get_ref()));
    }
    if a.client_secret.is_some() {
        present.push("client_secret (inline)".to_owned());
    }
    if env_secret.is_some() {
        present.push(format!("the {ENV_SECRET} environment variable"));
    }
    if let Some(p) = &cred_path {
        present.push(format!("the systemd credential {}", p.display()));
    }
    let at = a
        .client_secret_file
        .as_ref()
        .or(a.client_secret.as_ref())
        .map_or_else(|| method_span.clone(), Spanned::span);
    let key = "uplink.auth.client_secret";
    if present.len() > 1 {
        ctx.error(
            &at,
            key,
            format!(
                "the client secret comes from more than one source: {}; keep exactly one",
                present.join(" and ")
            ),
        );
        return None;
    }
    if let Some(f) = &a.client_secret_file {
        let k = "uplink.auth.client_secret_file";
        let path = ctx.abs_path(f, k);
        if !path.is_absolute() {
            return None;
        }
        return match read_secret_file(&path, true) {
            Ok((s, warning)) => {
                if let Some(w) = warning {
                    ctx.warn(&f.span(), k, w);
                }
                Some((s, SecretSource::File(path)))
            }
            Err(e) => {
                ctx.error(&f.span(), k, e);
                None
            }
        };
    }
    if let Some(s) = &a.client_secret {
        if s.get_ref().is_empty() {
            ctx.error(&s.span(), key, "must not be empty");
            return None;
        }
        ctx.warn(
            &s.span(),
            key,
            "an inline secret travels with every copy of this file; \
            prefer client_secret_file (mode 0600) or systemd LoadCredential=client_secret:...",
        );
        return Some((Secret::new(s.get_ref().clone()), SecretSource::Inline));
    }
    if let Some(v) = env_secret {
        return Some((Secret::new(v), SecretSource::Env));
    }
    if let Some(p) = cred_path {
        // systemd owns the mode of credential files; it makes them readable by the service only.
        return match read_secret_file(&p, false) {
            Ok((s, _)) => Some((s, SecretSource::CredentialsDirectory(p))),
            Err(e) => {
                ctx.error(method_span, key, e);
                None
            }
        };
    }
    if !opts.secret_required {
        return None;
    }
    ctx.error(
        method_span,
        key,
        format!(
        "method = \"{method}\" needs a client secret: set client_secret_file, the {ENV_SECRET} \
         environment variable, or systemd LoadCredential=client_secret:/etc/labagent/client_secret"
    ),
    );
    None
}
