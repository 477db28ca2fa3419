//! The status socket (`[agent] status_socket`): a unix stream socket, mode 0660 (owner and
//! group only), one request line per connection:
//!
//! - `status` → the [`AgentStatus`] as one JSON document, then the server closes;
//! - `monitor CHANNEL` → one text line per wire event of that channel until the client
//!   hangs up (`labagent monitor`); `ERR …` if there is no such channel;
//! - `queue {json}` → `OK` and the output of a [`super::queue::QueueRequest`], or `ERR …`;
//! - `reload` → `OK`, and the agent reloads the config file in force as on SIGHUP
//!   (`labagent remote reset`).
//!
//! The socket carries wire bytes (monitor): that is why it is not world-accessible.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch};

use super::status::Registry;
use crate::channel::{Dir, WireEvent};
use crate::text::render_bytes;

/// Binds the socket (replacing a stale one), mode 0660.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir)?;
        }
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{} is in use: is another labagent running with this config?",
                    path.display()
                ),
            ))
        }
        Err(_) if path.exists() => std::fs::remove_file(path)?,
        Err(_) => {}
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

/// Serves requests until `stop` turns true, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        match conn {
            Ok((s, _)) => {
                let r = registry.clone();
                let st = stop.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(s, r, st).await {
                        tracing::debug!(error = %e, "status socket client");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "status socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

async fn handle(
    s: UnixStream,
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let (r, mut w) = s.into_split();
    let mut line = String::new();
    let mut r = BufReader::new(r);
    tokio::time::timeout(std::time::Duration::from_secs(10), r.read_line(&mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request"))??;
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("status"), None) => {
            let reg = registry.clone();
            let st = tokio::task::spawn_blocking(move || reg.snapshot())
                .await
                .map_err(io::Error::other)?;
            let mut json = serde_json::to_vec(&st).map_err(io::Error::other)?;
            json.push(b'\n');
            w.write_all(&json).await?;
        }
        (Some("queue"), Some(_)) => {
            let json = line.trim_start()["queue".len()..].trim();
            let reply = match serde_json::from_str::<super::queue::QueueRequest>(json) {
                Ok(req) => {
                    let store = registry.store.clone();
                    match tokio::task::spawn_blocking(move || super::queue::execute(&store, &req))
                        .await
                    {
                        Ok(Ok(text)) => format!("OK\n{text}"),
                        Ok(Err(e)) => format!("ERR {e}\n"),
                        Err(e) => format!("ERR {e}\n"),
                    }
                }
                Err(e) => format!("ERR bad queue request: {e}\n"),
            };
            w.write_all(reply.as_bytes()).await?;
        }
        (Some("reload"), None) => {
            // The service loop owns the reload: the same path as `systemctl reload`.
            let me = rustix::process::getpid();
            match rustix::process::kill_process(me, rustix::process::Signal::Hup) {
                Ok(()) => w.write_all(b"OK reloading\n").await?,
                Err(e) => w.write_all(format!("ERR {e}\n").as_bytes()).await?,
            }
        }
        (Some("monitor"), Some(name)) => {
            let Some(ctx) = registry.channel(name) else {
                let names = registry.channel_names().join(", ");
                w.write_all(format!("ERR no channel {name:?} (channels: {names})\n").as_bytes())
                    .await?;
                return Ok(());
            };
            let mut rx = ctx.subscribe_wire();
            w.write_all(format!("OK monitoring {name}\n").as_bytes())
                .await?;
            let mut probe = [0u8; 1];
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Ok(ev) => w.write_all(render_event(&ev).as_bytes()).await?,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            w.write_all(format!("… {n} events skipped (monitor too slow)\n").as_bytes()).await?
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    // The client hung up (read returns 0) or sent something: end.
                    _ = tokio::io::AsyncReadExt::read(&mut r, &mut probe) => break,
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                }
            }
        }
        _ => {
            w.write_all(b"ERR unknown request; try \"status\" or \"monitor CHANNEL\"\n")
                .await?;
        }
    }
    w.shutdown().await
}

/// `12:00:01.123 <- <ENQ>`: UTC time, direction (`->` agent to instrument, `<-`
/// instrument to agent), the bytes.
pub fn render_event(ev: &WireEvent) -> String {
    let ms = ev
        .at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let day_ms = ms % 86_400_000;
    let arrow = match ev.dir {
        Dir::In => "<-",
        Dir::Out => "->",
    };
    format!(
        "{:02}:{:02}:{:02}.{:03} {arrow} {}\n",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000,
        render_bytes(&ev.bytes)
    )
}

/// Client side: one request, the whole answer.
pub fn request(path: &Path, req: &str) -> io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.write_all(req.as_bytes())?;
    s.write_all(b"\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Client side of `monitor`: copies lines to `out` until the agent ends the stream.
pub fn monitor(path: &Path, channel: &str, out: &mut dyn io::Write) -> io::Result<()> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.write_all(format!("monitor {channel}\n").as_bytes())?;
    let r = std::io::BufReader::new(s);
    for (i, line) in r.lines().enumerate() {
        let line = line?;
        if i == 0 {
            if let Some(e) = line.strip_prefix("ERR ") {
                return Err(io::Error::new(io::ErrorKind::NotFound, e.to_string()));
            }
        }
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_an_astm_exchange() {
        let ev = WireEvent {
            at: UNIX_EPOCH + std::time::Duration::from_millis(3_600_000 * 12 + 61_123),
            dir: Dir::In,
            bytes: Arc::from(&b"\x021H|\\^&\r\x03A3\r\n"[..]),
        };
        assert_eq!(
            render_event(&ev),
            "12:01:01.123 <- <STX>1H|\\^&<CR><ETX>A3<CR><LF>\n"
        );
    }
}
