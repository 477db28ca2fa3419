//! Line settings of a serial port, as this module needs them.
//!
//! Own types rather than the config crate's or tokio-serial's: the config crate maps onto
//! these, and the drivers never name tokio-serial.

use std::path::PathBuf;

/// Bits per character.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DataBits {
    Seven,
    #[default]
    Eight,
}

/// Parity bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

/// Stop bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StopBits {
    #[default]
    One,
    Two,
}

/// Flow control: `Software` is XON/XOFF, `Hardware` is RTS/CTS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FlowControl {
    #[default]
    None,
    Software,
    Hardware,
}

/// Everything needed to open a serial port. `path` is opened as given at every attempt, so
/// a `/dev/serial/by-id/...` symlink that now points to another device is followed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialSettings {
    pub path: PathBuf,
    pub baud: u32,
    pub data_bits: DataBits,
    pub parity: Parity,
    pub stop_bits: StopBits,
    pub flow_control: FlowControl,
}

impl SerialSettings {
    /// 8N1, no flow control, at `baud`.
    pub fn new(path: impl Into<PathBuf>, baud: u32) -> Self {
        SerialSettings {
            path: path.into(),
            baud,
            data_bits: DataBits::Eight,
            parity: Parity::None,
            stop_bits: StopBits::One,
            flow_control: FlowControl::None,
        }
    }

    /// Short form for logs, e.g. `9600 8N1`.
    pub fn line(&self) -> String {
        let d = match self.data_bits {
            DataBits::Seven => '7',
            DataBits::Eight => '8',
        };
        let p = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        let s = match self.stop_bits {
            StopBits::One => '1',
            StopBits::Two => '2',
        };
        let f = match self.flow_control {
            FlowControl::None => "",
            FlowControl::Software => " xon/xoff",
            FlowControl::Hardware => " rts/cts",
        };
        format!("{} {d}{p}{s}{f}", self.baud)
    }

    pub(crate) fn builder(&self) -> tokio_serial::SerialPortBuilder {
        tokio_serial::new(self.path.to_string_lossy(), self.baud)
            .data_bits(match self.data_bits {
                DataBits::Seven => tokio_serial::DataBits::Seven,
                DataBits::Eight => tokio_serial::DataBits::Eight,
            })
            .parity(match self.parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Even => tokio_serial::Parity::Even,
                Parity::Odd => tokio_serial::Parity::Odd,
            })
            .stop_bits(match self.stop_bits {
                StopBits::One => tokio_serial::StopBits::One,
                StopBits::Two => tokio_serial::StopBits::Two,
            })
            .flow_control(match self.flow_control {
                FlowControl::None => tokio_serial::FlowControl::None,
                FlowControl::Software => tokio_serial::FlowControl::Software,
                FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
            })
            // TIOCEXCL + flock: a second reader on an analyzer's line loses bytes silently.
            .exclusive(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_summary() {
        let mut s = SerialSettings::new("/dev/ttyS0", 19200);
        assert_eq!(s.line(), "19200 8N1");
        s.data_bits = DataBits::Seven;
        s.parity = Parity::Even;
        s.stop_bits = StopBits::Two;
        s.flow_control = FlowControl::Software;
        assert_eq!(s.line(), "19200 7E2 xon/xoff");
    }

    /// Data bits and parity enable cannot be checked through a pty (the Linux pty driver
    /// forces CS8 and clears PARENB), so the mapping is checked here, on the builder.
    #[test]
    fn builder_carries_every_setting_and_exclusive() {
        let mut s = SerialSettings::new("/dev/ttyS0", 19200);
        s.data_bits = DataBits::Seven;
        s.parity = Parity::Even;
        s.stop_bits = StopBits::Two;
        s.flow_control = FlowControl::Software;
        let want = tokio_serial::new("/dev/ttyS0", 19200)
            .data_bits(tokio_serial::DataBits::Seven)
            .parity(tokio_serial::Parity::Even)
            .stop_bits(tokio_serial::StopBits::Two)
            .flow_control(tokio_serial::FlowControl::Software)
            .exclusive(true);
        assert_eq!(s.builder(), want);

        s.data_bits = DataBits::Eight;
        s.parity = Parity::Odd;
        s.stop_bits = StopBits::One;
        s.flow_control = FlowControl::Hardware;
        let want = tokio_serial::new("/dev/ttyS0", 19200)
            .data_bits(tokio_serial::DataBits::Eight)
            .parity(tokio_serial::Parity::Odd)
            .stop_bits(tokio_serial::StopBits::One)
            .flow_control(tokio_serial::FlowControl::Hardware)
            .exclusive(true);
        assert_eq!(s.builder(), want);
        assert_ne!(SerialSettings::new("/dev/ttyS0", 19200).builder(), want);
    }
}
