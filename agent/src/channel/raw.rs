//! Raw delimited channels: the hal's [`RawSession`] (start and end byte sequences, the
//! optional reply after the store) for instruments that speak neither ASTM E1381 nor MLLP
//! (Snibe MAGLUMI sends `ENQ STX <records> ETX EOT`, no frame numbers, no checksums).

use std::io;

use labagent_hal::buf::VecBuf;
use labagent_hal::raw::{RawConfig, RawSession};

use super::driver::LinkSession;

impl LinkSession for RawSession<VecBuf> {}

/// Framing settings from `[channel.raw]`.
pub fn raw_config(r: &labagent_config::Raw) -> io::Result<RawConfig> {
    RawConfig::new(
        &r.start,
        &r.end,
        r.reply.as_deref(),
        usize::try_from(r.max_message).unwrap_or(usize::MAX),
    )
    .map_err(|e| io::Error::other(format!("invalid [channel.raw] framing: {e:?}")))
}
