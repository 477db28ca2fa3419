//! The instrument's end of a line: a TCP socket, a serial port, or the master of a pty
//! whose slave the agent opens as if it were a serial port.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use super::pty::{DeviceLink, Pty};

/// A blocking byte line with a read timeout.
pub trait Wire {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Reads what is available, waiting up to `timeout`; `Ok(0)` when nothing came.
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize>;
}

impl Wire for TcpStream {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        Write::write_all(self, bytes)
    }
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        self.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        match self.read(buf) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the agent closed the connection",
            )),
            Ok(n) => Ok(n),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }
}

/// A real serial port (or a pty slave), opened at `baud` 8N1.
pub struct SerialWire(Box<dyn tokio_serial::SerialPort>);

impl SerialWire {
    pub fn open(path: &Path, baud: u32) -> io::Result<SerialWire> {
        let port = tokio_serial::new(path.to_string_lossy(), baud)
            .timeout(Duration::from_millis(100))
            .open()
            .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
        Ok(SerialWire(port))
    }
}

impl Wire for SerialWire {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)?;
        self.0.flush()
    }
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        self.0
            .set_timeout(timeout.max(Duration::from_millis(1)))
            .map_err(io::Error::other)?;
        match self.0.read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// A virtual serial line: a new pty whose slave is reachable at `link` (a symlink, like
/// `/dev/serial/by-id/...`); the instrument plays on the master.
pub struct PtyWire {
    pty: Pty,
    link: Option<DeviceLink>,
}

impl PtyWire {
    /// Creates the pty and, if given, the symlink `link` → `/dev/pts/N` (replacing a
    /// stale symlink of an earlier run).
    pub fn create(link: Option<&Path>) -> io::Result<PtyWire> {
        let pty = Pty::open()?;
        let link = match link {
            Some(l) => {
                if l.symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_symlink())
                {
                    std::fs::remove_file(l)?;
                }
                let dir = l.parent().unwrap_or(Path::new("."));
                let name = l
                    .file_name()
                    .ok_or_else(|| io::Error::other("--pty-link needs a file name"))?;
                Some(DeviceLink::create(
                    dir,
                    &name.to_string_lossy(),
                    pty.slave_path(),
                )?)
            }
            None => None,
        };
        Ok(PtyWire { pty, link })
    }

    /// The path the agent should open.
    pub fn device_path(&self) -> PathBuf {
        match &self.link {
            Some(l) => l.path().to_path_buf(),
            None => self.pty.slave_path().to_path_buf(),
        }
    }

    pub fn pty(&self) -> &Pty {
        &self.pty
    }

    /// Waits until the agent has opened the port.
    pub fn wait_open(&self, timeout: Duration) -> io::Result<()> {
        self.pty.wait_slave_open(timeout)
    }
}

impl Wire for PtyWire {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.pty.write_all(bytes)
    }
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        match self.pty.read_timeout(buf, timeout) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(0),
            Err(e) => Err(e),
        }
    }
}
