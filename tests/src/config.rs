//! `config.toml` files for the real binary: everything the agent writes (store, status
//! socket) inside the test's directory, an HTTP uplink without auth (plain http allowed:
//! it only ever points at loopback), and the channel tables a test needs.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// A `[[channel]]` table on a TCP `listen` port.
pub fn listen_channel(name: &str, protocol: &str, port: u16) -> String {
    format!("[[channel]]\nname = \"{name}\"\nprotocol = \"{protocol}\"\nlisten = \"127.0.0.1:{port}\"\n")
}

/// A `[[channel]]` table on a serial device (a pty's path or link in the tests).
pub fn serial_channel(name: &str, protocol: &str, device: &Path, baud: u32) -> String {
    format!(
        "[[channel]]\nname = \"{name}\"\nprotocol = \"{protocol}\"\nserial = \"{}\"\nbaud = {baud}\n",
        device.display()
    )
}

/// Writes `dir/config.toml`: agent `id`, state and status socket in `dir`, `agent_extra`
/// lines in `[agent]`, an HTTP uplink to `upload_url` without auth, then `channels`.
pub fn write(dir: &Path, id: &str, upload_url: &str, agent_extra: &str, channels: &str) -> PathBuf {
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"{id}\"\nstate_dir = \"{}\"\nstatus_socket = \"{}\"\n{agent_extra}\n\
             [uplink]\nkind = \"http\"\nurl = \"{upload_url}\"\nallow_plain_http = true\n\
             [uplink.auth]\nmethod = \"none\"\n{channels}",
            dir.join("state").display(),
            dir.join("status.sock").display(),
        ),
    )
    .expect("write config.toml");
    cfg
}

/// An upload URL where nothing listens (the uplink backs off; everything stays stored).
pub fn dead_url() -> String {
    format!("http://127.0.0.1:{}/x", free_port())
}
