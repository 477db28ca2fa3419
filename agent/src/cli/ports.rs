//! `labagent ports`: the serial ports this host has, read from sysfs.
//!
//! We read sysfs ourselves instead of using serialport's enumeration: that one needs
//! libudev, which complicates the static musl and ARM builds, and sysfs already holds what
//! a technician needs to tell two USB adapters apart (vendor, product, serial number).

use std::fs;
use std::path::{Path, PathBuf};

/// One serial port as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// `/dev/<name>`.
    pub dev: PathBuf,
    /// Stable names under `/dev/serial/by-id` that point to this port.
    pub by_id: Vec<PathBuf>,
    pub kind: PortKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortKind {
    Usb {
        vid: String,
        pid: String,
        serial: Option<String>,
        manufacturer: Option<String>,
        product: Option<String>,
    },
    /// A UART on the board or a PCI card (ttyS*, ttyAMA*, ...).
    Onboard { driver: Option<String> },
}

fn read_trimmed(p: &Path) -> Option<String> {
    let s = fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Lists the serial ports under `sys` (normally `/sys`), with by-id names from `dev_root`
/// (normally `/dev`). Virtual consoles and 8250 slots without hardware are left out.
pub fn list(sys: &Path, dev_root: &Path) -> Vec<PortInfo> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(sys.join("class/tty")) else {
        return out;
    };
    let by_id = by_id_links(&dev_root.join("serial/by-id"));
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let tty = entry.path();
        let Ok(device) = fs::canonicalize(tty.join("device")) else {
            continue; // virtual terminals, pty masters: no device behind them
        };
        // 8250 drivers register slots (ttyS0..31) whether or not a UART exists; a slot
        // with uart type 0 (or none) has no hardware behind it.
        if name.starts_with("ttyS") {
            match read_trimmed(&tty.join("type")).and_then(|t| t.parse::<u32>().ok()) {
                Some(t) if t != 0 => {}
                _ => continue,
            }
        }
        let kind = usb_ancestor(&device)
            .map(|usb| PortKind::Usb {
                vid: read_trimmed(&usb.join("idVendor")).unwrap_or_default(),
                pid: read_trimmed(&usb.join("idProduct")).unwrap_or_default(),
                serial: read_trimmed(&usb.join("serial")),
                manufacturer: read_trimmed(&usb.join("manufacturer")),
                product: read_trimmed(&usb.join("product")),
            })
            .unwrap_or_else(|| PortKind::Onboard {
                driver: fs::read_link(device.join("driver"))
                    .ok()
                    .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned())),
            });
        let dev = dev_root.join(&name);
        let links = by_id
            .iter()
            .filter(|(_, target)| target.file_name().map(|n| n == name.as_str()) == Some(true))
            .map(|(link, _)| link.clone())
            .collect();
        out.push(PortInfo {
            dev,
            by_id: links,
            kind,
        });
    }
    out.sort_by(|a, b| a.dev.cmp(&b.dev));
    out
}

fn usb_ancestor(device: &Path) -> Option<PathBuf> {
    device
        .ancestors()
        .take(8)
        .find(|p| p.join("idVendor").is_file())
        .map(Path::to_path_buf)
}

fn by_id_links(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut links: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let target = fs::read_link(e.path()).ok()?;
            Some((e.path(), target))
        })
        .collect();
    links.sort();
    links
}

/// The human-readable table printed by `labagent ports`.
pub fn render(ports: &[PortInfo]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if ports.is_empty() {
        s.push_str("no serial ports found (plug in the USB adapter, then run this again)\n");
        return s;
    }
    for p in ports {
        let _ = write!(s, "{}", p.dev.display());
        match &p.kind {
            PortKind::Usb {
                vid,
                pid,
                serial,
                manufacturer,
                product,
            } => {
                let _ = write!(s, "  usb {vid}:{pid}");
                if let Some(sn) = serial {
                    let _ = write!(s, " serial={sn}");
                }
                let names: Vec<&str> = [manufacturer, product]
                    .iter()
                    .filter_map(|o| o.as_deref())
                    .collect();
                if !names.is_empty() {
                    let _ = write!(s, " ({})", names.join(" "));
                }
            }
            PortKind::Onboard { driver } => {
                let _ = write!(s, "  onboard");
                if let Some(d) = driver {
                    let _ = write!(s, " driver={d}");
                }
            }
        }
        s.push('\n');
        for l in &p.by_id {
            let _ = writeln!(s, "    {}", l.display());
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Builds a fake sysfs with one FTDI adapter, one real UART, one empty 8250 slot and
    /// one virtual console, the way the kernel lays them out.
    #[test]
    fn lists_usb_and_onboard_ports_from_a_fake_sysfs() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path().join("sys");
        let dev = root.path().join("dev");
        let usbdev = sys.join("devices/pci0000:00/usb1/1-1");
        let iface = usbdev.join("1-1:1.0/ttyUSB0");
        fs::create_dir_all(&iface).unwrap();
        fs::write(usbdev.join("idVendor"), "0403\n").unwrap();
        fs::write(usbdev.join("idProduct"), "6001\n").unwrap();
        fs::write(usbdev.join("serial"), "A50285BI\n").unwrap();
        fs::write(usbdev.join("manufacturer"), "FTDI\n").unwrap();
        fs::write(usbdev.join("product"), "FT232R USB UART\n").unwrap();
        let uart = sys.join("devices/platform/serial8250/ttyS0");
        let empty = sys.join("devices/platform/serial8250/ttyS1");
        let drivers = sys.join("bus/platform/drivers/serial8250");
        for d in [&uart, &empty, &drivers] {
            fs::create_dir_all(d).unwrap();
        }
        symlink(&drivers, uart.join("driver")).unwrap();
        let class = sys.join("class/tty");
        for n in ["ttyUSB0", "ttyS0", "ttyS1", "tty1"] {
            fs::create_dir_all(class.join(n)).unwrap();
        }
        symlink(&iface, class.join("ttyUSB0/device")).unwrap();
        symlink(&uart, class.join("ttyS0/device")).unwrap();
        fs::write(class.join("ttyS0/type"), "4\n").unwrap();
        symlink(&empty, class.join("ttyS1/device")).unwrap();
        fs::write(class.join("ttyS1/type"), "0\n").unwrap();
        fs::create_dir_all(dev.join("serial/by-id")).unwrap();
        symlink(
            "../../ttyUSB0",
            dev.join("serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"),
        )
        .unwrap();

        let ports = list(&sys, &dev);
        assert_eq!(ports.len(), 2, "{ports:?}");
        assert_eq!(ports[0].dev, dev.join("ttyS0"));
        assert_eq!(
            ports[0].kind,
            PortKind::Onboard {
                driver: Some("serial8250".into())
            }
        );
        assert_eq!(ports[1].dev, dev.join("ttyUSB0"));
        match &ports[1].kind {
            PortKind::Usb {
                vid, pid, serial, ..
            } => {
                assert_eq!((vid.as_str(), pid.as_str()), ("0403", "6001"));
                assert_eq!(serial.as_deref(), Some("A50285BI"));
            }
            other => panic!("expected usb, got {other:?}"),
        }
        assert_eq!(ports[1].by_id.len(), 1);
        let text = render(&ports);
        assert!(
            text.contains("usb 0403:6001 serial=A50285BI (FTDI FT232R USB UART)"),
            "{text}"
        );
        assert!(
            text.contains("usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"),
            "{text}"
        );
    }

    #[test]
    fn no_sysfs_means_no_ports_and_a_hint() {
        let ports = list(Path::new("/nonexistent-sys"), Path::new("/nonexistent-dev"));
        assert!(ports.is_empty());
        assert!(render(&ports).contains("no serial ports found"));
    }
}
