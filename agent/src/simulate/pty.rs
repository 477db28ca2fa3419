//! Pseudo-terminal pairs as virtual serial lines, for tests.
//!
//! The code under test opens the *slave* (`/dev/pts/N`, or a symlink to it, like a
//! `/dev/serial/by-id/...` path) exactly as it would a real serial port; the test plays the
//! instrument on the *master*. Closing the master is an unplug: the slave side then reads
//! EOF/EIO and sees a hang-up, as with a USB adapter pulled out.
//!
//! What a pty does not do: it has no UART, so **baud rate, parity, data bits, stop bits and
//! RTS/CTS have no effect** on the bytes. Speed, CSTOPB, PARODD, CRTSCTS, IXON/IXOFF are
//! stored in the slave's termios as set (read them back with [`Pty::slave_termios`]); data
//! bits and parity enable are not even stored: Linux's pty driver forces CS8 and clears
//! PARENB on every termios change. A 7-bit setting does not strip the 8th bit, a parity
//! error cannot happen, and 9600 baud is as fast as memory. Software flow control (IXON) *does* act on a pty: XOFF (0x13) written by the
//! master pauses the slave's output until XON (0x11).
//!
//! This file is the one implementation: `labagent simulate --pty-link` uses it, and the
//! `labagent-tests` crate includes it with `#[path]`, so it may use only `std` and `rustix`
//! (features `pty`, `termios`, `fs`, `event`).
//! No `sleep` waits for an event except where Linux offers none: a master whose slave is
//! not open reports POLLHUP continuously, so waiting through that state is a bounded poll
//! in short steps.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
use rustix::termios::{tcgetattr, tcsetattr, OptionalActions, Termios};

/// How long to wait between polls while the slave is closed (see the module doc).
const HUP_STEP: Duration = Duration::from_millis(5);

/// A pty pair; the test holds the master, the code under test opens [`Pty::slave_path`].
#[derive(Debug)]
pub struct Pty {
    master: File,
    slave: PathBuf,
}

impl Pty {
    /// A new pair with the slave in raw mode (no echo, no CR/NL translation, no signals),
    /// as `cfmakeraw` would set it. The slave is not held open, so the code under test can
    /// open it exclusively (TIOCEXCL) and reopen it after closing. Termios requests on the
    /// master act on the slave (Linux), which is how [`Pty::slave_termios`] reads it.
    pub fn open() -> io::Result<Pty> {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname(&master, Vec::new())?;
        let slave = PathBuf::from(OsStr::from_bytes(name.as_bytes()));
        // Open the slave once, set raw mode, close it: the master then reports the slave as
        // closed (POLLHUP) until the code under test opens it, so `wait_slave_open` has a
        // defined starting point (a never-opened slave does not raise POLLHUP).
        let s = rustix::fs::open(
            &slave,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let mut t = tcgetattr(&s)?;
        t.make_raw();
        tcsetattr(&s, OptionalActions::Now, &t)?;
        drop(s);
        Ok(Pty {
            master: File::from(master),
            slave,
        })
    }

    /// `/dev/pts/N`.
    pub fn slave_path(&self) -> &Path {
        &self.slave
    }

    /// The master, blocking; `&File` implements `Read` and `Write`.
    pub fn master(&self) -> &File {
        &self.master
    }

    /// The slave's current termios (as set by whoever opened it): read through the master,
    /// so it works while the code under test holds the slave exclusively.
    pub fn slave_termios(&self) -> io::Result<Termios> {
        Ok(tcgetattr(&self.master)?)
    }

    /// Writes all of `bytes` to the instrument side of the line.
    pub fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        (&self.master).write_all(bytes)?;
        (&self.master).flush()
    }

    /// Reads what is available, waiting up to `timeout` for the first byte.
    /// `Err(TimedOut)` when nothing came.
    pub fn read_timeout(&self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no bytes from the slave",
                ));
            }
            let flags = self.poll(PollFlags::IN, left)?;
            if flags.contains(PollFlags::IN) {
                match (&self.master).read(buf) {
                    Ok(n) => return Ok(n),
                    // EIO: the slave closed between poll and read; keep waiting for it.
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if flags.contains(PollFlags::HUP) {
                std::thread::sleep(HUP_STEP.min(left));
            }
        }
    }

    /// Reads exactly `n` bytes within `timeout` in total. On timeout the error message
    /// shows what did arrive.
    pub fn read_exact_timeout(&self, n: usize, timeout: Duration) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::with_capacity(n);
        let mut buf = [0u8; 4096];
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let want = (n - got.len()).min(buf.len());
            match self.read_timeout(&mut buf[..want], left) {
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("wanted {n} bytes, got {} : {:02x?}", got.len(), got),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    /// Reads until `pred` holds for everything read so far, within `timeout`.
    pub fn read_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[u8]) -> bool,
    ) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !pred(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_timeout(&mut buf, left) {
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("condition not met; got {} bytes: {:02x?}", got.len(), got),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    /// Whether someone has the slave open now (the master stops reporting POLLHUP).
    pub fn slave_is_open(&self) -> io::Result<bool> {
        Ok(!self
            .poll(PollFlags::empty(), Duration::ZERO)?
            .contains(PollFlags::HUP))
    }

    /// Waits until the code under test has opened the slave.
    pub fn wait_slave_open(&self, timeout: Duration) -> io::Result<()> {
        self.wait_hup(false, timeout)
    }

    /// Waits until the code under test has closed the slave.
    pub fn wait_slave_closed(&self, timeout: Duration) -> io::Result<()> {
        self.wait_hup(true, timeout)
    }

    /// Unplugs the line: closes the master. The slave's reader sees EOF/EIO and a hang-up.
    pub fn unplug(self) {
        drop(self)
    }

    fn wait_hup(&self, hup: bool, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if hup {
                // POLLHUP is an event: poll blocks until it comes.
                if self
                    .poll(PollFlags::empty(), left)?
                    .contains(PollFlags::HUP)
                {
                    return Ok(());
                }
            } else if self.slave_is_open()? {
                return Ok(());
            } else {
                std::thread::sleep(HUP_STEP.min(left));
            }
            if left.is_zero() {
                let what = if hup { "closed" } else { "opened" };
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("slave {} not {what} in {timeout:?}", self.slave.display()),
                ));
            }
        }
    }

    fn poll(&self, events: PollFlags, timeout: Duration) -> io::Result<PollFlags> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let mut fds = [PollFd::new(&self.master, events)];
        loop {
            match poll(&mut fds, ms) {
                Ok(_) => return Ok(fds[0].revents()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A symlink standing for a stable device name (`/dev/serial/by-id/...`), re-pointable
/// atomically to another pty, as udev does when an adapter comes back as another tty.
#[derive(Debug)]
pub struct DeviceLink {
    path: PathBuf,
}

impl DeviceLink {
    /// Creates `dir/name` → `target`.
    pub fn create(dir: &Path, name: &str, target: &Path) -> io::Result<DeviceLink> {
        let link = DeviceLink {
            path: dir.join(name),
        };
        link.point_to(target)?;
        Ok(link)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the link point to `target`: a new symlink under a temporary name, renamed
    /// over the old one, so an open never sees a missing link in between.
    pub fn point_to(&self, target: &Path) -> io::Result<()> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp)?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Removes the link (the device is gone and udev dropped its name).
    pub fn remove(&self) -> io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    const T: Duration = Duration::from_secs(5);

    fn open_slave(p: &Path) -> File {
        OpenOptions::new().read(true).write(true).open(p).unwrap()
    }

    #[test]
    fn raw_both_ways_and_open_close_events() {
        let pty = Pty::open().unwrap();
        assert!(!pty.slave_is_open().unwrap());
        let mut slave = open_slave(pty.slave_path());
        pty.wait_slave_open(T).unwrap();

        // Raw: no echo back to the master, no NL → CR NL on output.
        pty.write_all(b"abc\n").unwrap();
        let mut got = [0u8; 4];
        slave.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc\n");
        slave.write_all(b"x\ny").unwrap();
        assert_eq!(pty.read_exact_timeout(3, T).unwrap(), b"x\ny");

        let mut buf = [0u8; 8];
        let e = pty
            .read_timeout(&mut buf, Duration::from_millis(20))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);

        drop(slave);
        pty.wait_slave_closed(T).unwrap();
        // Closed slave: the read waits (through POLLHUP) and times out, it does not fail.
        let e = pty
            .read_timeout(&mut buf, Duration::from_millis(20))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn unplug_hangs_up_the_slave() {
        let pty = Pty::open().unwrap();
        let mut slave = open_slave(pty.slave_path());
        pty.unplug();
        let mut buf = [0u8; 4];
        assert!(matches!(slave.read(&mut buf), Ok(0) | Err(_)));
    }

    #[test]
    fn device_link_repoints_atomically() {
        let dir = std::env::temp_dir().join(format!("pty-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = Pty::open().unwrap();
        let b = Pty::open().unwrap();
        let link = DeviceLink::create(&dir, "instrument", a.slave_path()).unwrap();
        assert_eq!(std::fs::read_link(link.path()).unwrap(), a.slave_path());
        link.point_to(b.slave_path()).unwrap();
        assert_eq!(std::fs::read_link(link.path()).unwrap(), b.slave_path());
        let mut s = open_slave(link.path());
        s.write_all(b"b").unwrap();
        assert_eq!(b.read_exact_timeout(1, T).unwrap(), b"b");
        link.remove().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
