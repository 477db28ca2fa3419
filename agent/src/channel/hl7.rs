//! HL7 v2 over MLLP: the hal's [`Hl7Session`] (framing, the commit before every ACK, the
//! ACK per MSH-15/16 and the channel's `ack`, orders awaiting their ACK) with the channel's
//! settings, and the meta stored with each message.
//! What is stored with each message is [`crate::meta::hl7`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use labagent_hal::buf::VecBuf;
use labagent_hal::hl7::ack::AckMode;
use labagent_hal::hl7::session::{Hl7Config, Hl7Session};
use labagent_hal::session::OrderPolicy;

use super::astm::hal_duration;
use super::driver::LinkSession;

impl LinkSession for Hl7Session<VecBuf> {
    fn set_wall_clock(&mut self, unix_secs: i64) {
        Hl7Session::set_wall_clock(self, unix_secs)
    }
}

/// How long the instrument has to acknowledge an order.
pub const ORDER_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// A session with the channel's settings (`query_timeout`: the channel's); its ACKs' MSH-10 start with a prefix unique to
/// this connection and process start (at most 10 characters, so the id fits the 20 of
/// v2.3's MSH-10).
pub fn session(cfg: &labagent_config::Hl7, query_timeout: Duration) -> Hl7Session<VecBuf> {
    static CONN: AtomicU32 = AtomicU32::new(0);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let n = CONN.fetch_add(1, Ordering::Relaxed) % (36 * 36 * 36);
    let prefix = format!("L{:06x}{}-", secs & 0xff_ffff, base36(n));
    Hl7Session::new(
        Hl7Config {
            max_message: usize::try_from(cfg.max_message).unwrap_or(usize::MAX),
            mode: ack_mode(&cfg.ack),
            orders: OrderPolicy::default(),
            ack_timeout: hal_duration(ORDER_ACK_TIMEOUT),
            query_timeout: hal_duration(query_timeout),
        },
        prefix.as_bytes(),
    )
}

fn base36(mut n: u32) -> String {
    let mut s = Vec::new();
    loop {
        s.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

/// The channel's `[channel.hl7] ack` as the hal's mode.
pub fn ack_mode(a: &labagent_config::AckMode) -> AckMode {
    match a {
        labagent_config::AckMode::Original => AckMode::Original,
        labagent_config::AckMode::Enhanced => AckMode::Enhanced,
    }
}
