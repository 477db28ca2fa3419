//! The Arm CMSDK APB UART (Cortex-M System Design Kit, DDI0479) of the MPS2 AN385 board,
//! behind `embedded-io`'s `Read`, `ReadReady` and `Write`: all the hal's blocking driver
//! needs of a byte pipe.
//!
//! The UART is 8N1 with a one-byte receive buffer and a one-byte transmit buffer, polled.
//! - `read` waits for the first byte (as `embedded_io::Read` requires), then takes what is
//!   there without waiting again; `read_ready` says whether a byte is there.
//! - `write` puts each byte in the transmit buffer once it is free; `flush` waits for the
//!   last one to leave it (the UART has no "shift register empty" flag).
//! - An overrun (a byte arrived before the last was read) is cleared and not reported: the
//!   frame it hit fails its checksum and is NAKed, so the instrument sends it again.
//!
//! The registers are memory-mapped: every access is a volatile read or write of an address
//! the board's memory map fixes, which Rust can only do in `unsafe` code. Each such block
//! says why it is sound.

use core::convert::Infallible;

/// Base addresses (AN385 memory map; QEMU's `mps2-an385` maps `-serial` N to UART N).
pub const UART0: usize = 0x4000_4000;
pub const UART1: usize = 0x4000_5000;

const DATA: usize = 0x00;
const STATE: usize = 0x04;
const CTRL: usize = 0x08;
const INTSTATUS: usize = 0x0c;
const BAUDDIV: usize = 0x10;

const STATE_TX_FULL: u32 = 1 << 0;
const STATE_RX_FULL: u32 = 1 << 1;
const STATE_RX_OVERRUN: u32 = 1 << 3;
const CTRL_TX_EN: u32 = 1 << 0;
const CTRL_RX_EN: u32 = 1 << 1;
const CTRL_RX_INTEN: u32 = 1 << 3;
const INT_RX: u32 = 1 << 1;

/// One UART.
pub struct Uart {
    base: usize,
}

impl Uart {
    /// The UART at `base`.
    ///
    /// # Safety
    /// `base` must be a CMSDK APB UART's base address ([`UART0`], [`UART1`]), and no other
    /// `Uart` may exist for it: the value owns the UART's registers. (The receive interrupt
    /// handler only writes INTSTATUS, which this value never touches after `enable`.)
    pub const unsafe fn new(base: usize) -> Self {
        Uart { base }
    }

    fn reg(&self, reg: usize) -> u32 {
        // SAFETY: `base + reg` is one of this UART's 32-bit registers (the constructor's
        // contract); a volatile read of a device register has no effect on Rust memory.
        unsafe { core::ptr::read_volatile((self.base + reg) as *const u32) }
    }

    fn set(&mut self, reg: usize, value: u32) {
        // SAFETY: as in `reg`; `&mut self` makes this value the only writer.
        unsafe { core::ptr::write_volatile((self.base + reg) as *mut u32, value) }
    }

    /// Sets the baud rate (`bauddiv` = UART clock / baud, at least 16), enables receive and
    /// transmit, and optionally the receive interrupt (so `wfi` wakes for a byte).
    pub fn enable(&mut self, bauddiv: u32, rx_interrupt: bool) {
        self.set(CTRL, 0);
        self.set(BAUDDIV, bauddiv.max(16));
        self.set(INTSTATUS, 0x0f);
        let int = if rx_interrupt { CTRL_RX_INTEN } else { 0 };
        self.set(CTRL, CTRL_TX_EN | CTRL_RX_EN | int);
    }

    fn rx_full(&mut self) -> bool {
        let state = self.reg(STATE);
        if state & STATE_RX_OVERRUN != 0 {
            // Write-one-to-clear; the lost byte is caught by the frame's checksum.
            self.set(STATE, STATE_RX_OVERRUN);
        }
        state & STATE_RX_FULL != 0
    }

    fn put(&mut self, b: u8) {
        while self.reg(STATE) & STATE_TX_FULL != 0 {}
        self.set(DATA, u32::from(b));
    }
}

/// Acknowledges UART `base`'s receive interrupt (from its handler): the byte itself stays
/// in the data register for the main loop's `read`.
pub fn clear_rx_interrupt(base: usize) {
    // SAFETY: INTSTATUS of a CMSDK UART is write-one-to-clear; writing only the RX bit
    // touches no state the main loop's `Uart` reads or writes (DATA, STATE, CTRL).
    unsafe { core::ptr::write_volatile((base + INTSTATUS) as *mut u32, INT_RX) }
}

impl embedded_io::ErrorType for Uart {
    type Error = Infallible;
}

impl embedded_io::Read for Uart {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        while !self.rx_full() {}
        let mut n = 0;
        while n < buf.len() && self.rx_full() {
            buf[n] = self.reg(DATA) as u8;
            n += 1;
        }
        Ok(n)
    }
}

impl embedded_io::ReadReady for Uart {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(self.rx_full())
    }
}

impl embedded_io::Write for Uart {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        for &b in buf {
            self.put(b);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Infallible> {
        while self.reg(STATE) & STATE_TX_FULL != 0 {}
        Ok(())
    }
}
