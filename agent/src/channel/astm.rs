//! ASTM E1381 receiver driver (being written).
use std::io;
use std::sync::Arc;

use super::ChannelCtx;
use crate::source::Conn;

pub async fn serve(_conn: Conn, _ctx: Arc<ChannelCtx>) -> io::Result<()> {
    Err(io::Error::other("ASTM driver not built yet"))
}
