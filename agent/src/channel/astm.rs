//! ASTM E1381/E1394 channels: the hal's [`Link`] (receiver, sender, contention, order
//! attempts) with the channel's settings, and the meta stored with each message.

use std::time::Duration;

use labagent_hal::astm::link::{Link, LinkConfig};
use labagent_hal::astm::receiver::ReceiverConfig;
use labagent_hal::astm::sender::SenderConfig;
use labagent_hal::buf::VecBuf;
use labagent_hal::time::Duration as HalDuration;

use super::driver::{self, LinkSession};
use super::ChannelCtx;
use crate::source::Conn;

impl LinkSession for Link<VecBuf> {}

/// Runs an ASTM channel's link on one connection until it ends.
pub async fn serve(conn: Conn, ctx: std::sync::Arc<ChannelCtx>) -> std::io::Result<()> {
    let labagent_config::ProtocolSettings::Astm(cfg) = &ctx.config.settings else {
        return Err(std::io::Error::other("not an ASTM channel"));
    };
    let link = Link::<VecBuf>::new(link_config(cfg, ctx.config.query_timeout));
    let enc = ctx.config.encoding.clone();
    driver::run(conn, ctx.clone(), link, &|b, e| {
        crate::meta::astm(b, e, &enc)
    })
    .await
}

/// The link's settings from `[channel.astm]` and the channel's `query_timeout` (timers
/// not in the config keep LIS1-A values).
pub fn link_config(a: &labagent_config::Astm, query_timeout: Duration) -> LinkConfig {
    LinkConfig {
        receiver: ReceiverConfig {
            max_frame: a.max_frame as usize,
            max_message: a.max_message as usize,
            receive_timeout: hal_duration(a.receive_timeout),
            query_id_component: a.query_id_component.map(u32::from),
        },
        sender: SenderConfig {
            reply_timeout: hal_duration(a.ack_timeout),
            max_retries: a.max_retries.max(1),
            max_message: a.max_message as usize,
            ..SenderConfig::default()
        },
        query_timeout: hal_duration(query_timeout),
        ..LinkConfig::default()
    }
}

/// A hal duration (milliseconds) from a std one.
pub fn hal_duration(d: Duration) -> HalDuration {
    HalDuration::from_millis(d.as_millis().min(u64::MAX as u128) as u64)
}

/// Order text as records: LF and CR LF line ends become CR, and the last record ends in CR
/// (what the link's sender puts in frames).
pub fn order_text(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 1);
    for line in text.split(['\r', '\n']).filter(|l| !l.is_empty()) {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\r');
    }
    out
}
