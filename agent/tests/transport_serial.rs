//! Serial links over pty pairs: line settings reach termios, bytes flow both ways, and an
//! unplugged device (master closed, symlink dangling) is waited for with backoff and picked
//! up again behind the same path. Backoff runs on tokio's paused clock, so it costs no
//! real time and attempt counts are exact functions of virtual time.

use labagent::simulate::pty;

use std::path::Path;
use std::time::Duration;

use labagent::source::{
    Backoff, Conn, DataBits, FlowControl, Parity, PortState, SerialLink, SerialSettings, StopBits,
};
use pty::{DeviceLink, Pty};
use rustix::termios::{ControlModes, InputModes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

const GUARD: Duration = Duration::from_secs(10);

fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(250), Duration::from_secs(30), 1)
}

fn settings(path: &Path) -> SerialSettings {
    SerialSettings::new(path, 9600)
}

/// Awaits `f` with a guard in *real* time. Under the paused clock a `tokio::time::timeout`
/// around real IO would fire early: a pty delivers written bytes through a kernel work
/// queue, and the runtime jumps virtual time forward as soon as it sees nothing ready.
async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        // A failure guard only: the test normally finishes long before.
        std::thread::sleep(GUARD);
        let _ = tx.send(());
    });
    tokio::select! {
        v = f => v,
        _ = rx => panic!("{what}: nothing within {GUARD:?}"),
    }
}

/// Instrument → agent and agent → instrument.
async fn roundtrip(pty: &Pty, conn: &mut Conn) {
    pty.write_all(b"\x05hello").unwrap();
    let mut got = vec![0u8; 6];
    within("bytes from the master", conn.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"\x05hello");
    conn.write_all(b"\x06world\r\n").await.unwrap();
    conn.flush().await.unwrap();
    // Raw mode: no CR/NL translation on the way.
    let back = pty.read_exact_timeout(8, GUARD).unwrap();
    assert_eq!(back, b"\x06world\r\n");
}

/// Runs the link in the background, handing over each connection.
fn supervise(mut link: SerialLink) -> mpsc::Receiver<Conn> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let conn = link.next_connection().await;
            if tx.send(conn).await.is_err() {
                break;
            }
        }
    });
    rx
}

#[tokio::test]
async fn line_settings_reach_termios_7e2_xonxoff() {
    let pty = Pty::open().unwrap();
    let mut s = settings(pty.slave_path());
    s.baud = 19200;
    s.data_bits = DataBits::Seven;
    s.parity = Parity::Even;
    s.stop_bits = StopBits::Two;
    s.flow_control = FlowControl::Software;
    let mut link = SerialLink::new(s, backoff());
    let mut conn = link.next_connection().await;
    assert!(pty.slave_is_open().unwrap());

    let t = pty.slave_termios().unwrap();
    let c = t.control_modes;
    // The Linux pty driver forces CS8 and clears PARENB whatever is asked (pty.c,
    // pty_set_termios), so CS7 and PARENB cannot be read back here; the unit test
    // `builder_carries_every_setting_and_exclusive` checks they are requested.
    assert!(!c.contains(ControlModes::PARODD));
    assert!(c.contains(ControlModes::CSTOPB));
    assert!(!c.contains(ControlModes::CRTSCTS));
    assert!(t.input_modes.contains(InputModes::IXON | InputModes::IXOFF));
    assert_eq!(t.output_speed(), 19200);
    assert_eq!(t.input_speed(), 19200);

    // Data still flows (a pty ignores parity and speed).
    roundtrip(&pty, &mut conn).await;
}

#[tokio::test]
async fn line_settings_reach_termios_8o1_rtscts() {
    let pty = Pty::open().unwrap();
    let mut s = settings(pty.slave_path());
    s.baud = 115200;
    s.parity = Parity::Odd;
    s.flow_control = FlowControl::Hardware;
    let mut link = SerialLink::new(s, backoff());
    let _conn = link.next_connection().await;

    let t = pty.slave_termios().unwrap();
    let c = t.control_modes;
    assert_eq!(c & ControlModes::CSIZE, ControlModes::CS8);
    assert!(c.contains(ControlModes::PARODD));
    assert!(!c.contains(ControlModes::CSTOPB));
    assert!(c.contains(ControlModes::CRTSCTS));
    assert!(!t
        .input_modes
        .intersects(InputModes::IXON | InputModes::IXOFF));
    assert_eq!(t.output_speed(), 115200);
}

/// The common ASTM setting (9600 8N1, no flow control) and every baud rate seen in
/// instrument manuals reach termios. What a pty cannot show: it moves bytes at memory
/// speed whatever the baud rate, and the Linux pty driver forces CS8 and clears PARENB, so
/// 7-bit data and parity checking are only checked as *requested* (unit test
/// `builder_carries_every_setting_and_exclusive`); the speed and PARODD are read back.
#[tokio::test]
async fn line_settings_reach_termios_8n1_none_at_every_manual_baud_rate() {
    for baud in [1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] {
        let pty = Pty::open().unwrap();
        let mut s = settings(pty.slave_path());
        s.baud = baud;
        s.data_bits = DataBits::Eight;
        s.parity = Parity::None;
        s.stop_bits = StopBits::One;
        s.flow_control = FlowControl::None;
        let mut link = SerialLink::new(s, backoff());
        let mut conn = link.next_connection().await;

        let t = pty.slave_termios().unwrap();
        let c = t.control_modes;
        assert_eq!(c & ControlModes::CSIZE, ControlModes::CS8, "{baud}");
        assert!(!c.contains(ControlModes::PARODD), "{baud}");
        assert!(!c.contains(ControlModes::CSTOPB), "{baud}");
        assert!(!c.contains(ControlModes::CRTSCTS), "{baud}");
        assert!(
            !t.input_modes
                .intersects(InputModes::IXON | InputModes::IXOFF),
            "{baud}"
        );
        assert_eq!((t.input_speed(), t.output_speed()), (baud, baud));
        if baud == 9600 {
            roundtrip(&pty, &mut conn).await;
        }
    }
}

#[tokio::test]
async fn bytes_flow_and_status_is_open() {
    let pty = Pty::open().unwrap();
    let mut link = SerialLink::new(settings(pty.slave_path()), backoff());
    let status = link.status();
    assert_eq!(status.borrow().state, PortState::Starting);
    let mut conn = link.next_connection().await;
    {
        let s = status.borrow();
        assert_eq!(s.state, PortState::Open);
        assert_eq!((s.connections, s.opened, s.attempts), (1, 1, 1));
    }
    assert_eq!(conn.label(), pty.slave_path().display().to_string());
    roundtrip(&pty, &mut conn).await;
    drop(conn);
    pty.wait_slave_closed(GUARD).unwrap();
    assert_eq!(status.borrow().connections, 0);
}

#[tokio::test(start_paused = true)]
async fn unplug_waits_with_backoff_then_replug_behind_the_same_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let pty1 = Pty::open().unwrap();
    let dev = DeviceLink::create(dir.path(), "instrument", pty1.slave_path()).unwrap();
    let mut link = SerialLink::new(settings(dev.path()), backoff());
    let mut status = link.status();

    let mut conn = link.next_connection().await;
    assert!(conn
        .label()
        .contains(&pty1.slave_path().display().to_string()));
    roundtrip(&pty1, &mut conn).await;

    // Unplug: the slave reads EOF (or EIO) at once.
    pty1.unplug();
    let mut buf = [0u8; 16];
    let r = within("hang-up noticed", conn.read(&mut buf)).await;
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(conn.end_reason().is_some());
    drop(conn);
    assert_eq!(status.borrow().state, PortState::Reconnecting);
    assert!(status.borrow().last_error.is_some());

    // The node /dev/pts/N is gone; another test's pty could get the same N at any
    // moment, so the symlink is pointed at a path that never exists (udev removes a
    // by-id link on unplug; a dangling one is the same to the agent).
    dev.point_to(&dir.path().join("unplugged")).unwrap();
    let mut conns = supervise(link);
    // The symlink dangles: waiting for the device.
    status
        .wait_for(|s| s.state == PortState::WaitingForDevice)
        .await
        .unwrap();

    // No busy loop: over 10 virtual minutes, attempts are bounded by the backoff
    // (every delay ≥ half the nominal one; the nominal one reaches 30 s after 7 steps).
    let a0 = status.borrow().attempts;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(600)).await;
    let tries = status.borrow().attempts - a0;
    assert!(
        (10..=50).contains(&tries),
        "{tries} attempts in {:?}",
        t0.elapsed()
    );
    assert_eq!(status.borrow().state, PortState::WaitingForDevice);

    // Replug: another pty, the same name.
    let pty2 = Pty::open().unwrap();
    dev.point_to(pty2.slave_path()).unwrap();
    let t1 = Instant::now();
    let mut conn = timeout(Duration::from_secs(60), conns.recv())
        .await
        .expect("reopened within one capped backoff")
        .unwrap();
    assert!(t1.elapsed() <= Duration::from_secs(30));
    assert!(conn
        .label()
        .ends_with(&pty2.slave_path().display().to_string()));
    assert_eq!(status.borrow().state, PortState::Open);
    roundtrip(&pty2, &mut conn).await;
}

#[tokio::test(start_paused = true)]
async fn missing_at_start_then_appears() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("instrument");
    let link = SerialLink::new(settings(&path), backoff());
    let mut status = link.status();
    let mut conns = supervise(link);

    status
        .wait_for(|s| s.state == PortState::WaitingForDevice && s.attempts >= 3)
        .await
        .unwrap();
    assert!(status.borrow().last_error.is_some());

    let pty = Pty::open().unwrap();
    let _dev = DeviceLink::create(dir.path(), "instrument", pty.slave_path()).unwrap();
    let mut conn = timeout(Duration::from_secs(60), conns.recv())
        .await
        .expect("opened once the device appeared")
        .unwrap();
    assert_eq!(status.borrow().state, PortState::Open);
    assert_eq!(status.borrow().last_error, None);
    roundtrip(&pty, &mut conn).await;
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_dies_at_once_still_waits_before_reopening() {
    let pty = Pty::open().unwrap();
    let mut link = SerialLink::new(settings(pty.slave_path()), backoff());
    let status = link.status();
    let mut last = Instant::now();
    for i in 0..5 {
        let conn = link.next_connection().await;
        let waited = last.elapsed();
        if i > 0 {
            // Dropped without data: the backoff grows, it is never skipped.
            assert!(
                waited >= Duration::from_millis(125),
                "reopen {i} after {waited:?}"
            );
        }
        drop(conn);
        last = Instant::now();
    }
    assert_eq!(status.borrow().opened, 5);
}

#[tokio::test(start_paused = true)]
async fn a_port_held_by_another_link_is_retried_not_shared() {
    let pty = Pty::open().unwrap();
    let mut first = SerialLink::new(settings(pty.slave_path()), backoff());
    let held = first.next_connection().await;

    let second = SerialLink::new(settings(pty.slave_path()), backoff());
    let mut status = second.status();
    let mut conns = supervise(second);
    // Exclusive open (TIOCEXCL + flock): the second link cannot open it and says why.
    status
        .wait_for(|s| s.state == PortState::Reconnecting && s.attempts >= 2)
        .await
        .unwrap();
    assert!(status.borrow().last_error.is_some());

    drop(held);
    let mut conn = timeout(Duration::from_secs(60), conns.recv())
        .await
        .expect("opened once released")
        .unwrap();
    roundtrip(&pty, &mut conn).await;
}
