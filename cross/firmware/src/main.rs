//! labagent's ASTM receiver on bare metal: an Arm MPS2 board with the AN385 image
//! (Cortex-M3, 25 MHz), as `qemu-system-arm -machine mps2-an385` emulates it.
//!
//! - UART0 is the instrument's line: the hal's whole ASTM link session
//!   (`labagent_hal::astm::link::Link`) answers ENQ, ACKs or NAKs each frame, checks frame
//!   numbers, drops retransmitted copies and runs the receive timer.
//! - UART1 carries only the committed messages: each as one line of lowercase hex of its
//!   record text (records ended by CR), then `\n`; `-\n` ends a message abandoned by the
//!   receive timer. A frame is printed before it is acknowledged.
//! - SysTick gives the session its milliseconds; `wfi` idles the core between bytes (the
//!   UART0 receive interrupt and the tick wake it).
//!
//! No allocator is linked; the state is a few statics of fixed size (docs/FIRMWARE.md).
#![no_std]
#![no_main]

mod clock;
mod uart;

use cortex_m::interrupt::InterruptNumber;
use cortex_m::peripheral::NVIC;
use cortex_m_rt::{entry, exception};
use labagent_firmware::{link_config, HexLines, Link, RX, TX};
use labagent_hal::drive::Runner;
use panic_halt as _;

use uart::Uart;

/// The AN385's core and peripheral clock.
const CORE_HZ: u32 = 25_000_000;
/// Both UARTs run at 115 200 baud (the divisor is what real hardware needs; QEMU moves
/// bytes as fast as the sockets take them).
const BAUDDIV: u32 = CORE_HZ / 115_200;

/// The board's interrupt lines the firmware uses (AN385: UART0 receive is IRQ 0).
#[derive(Clone, Copy)]
enum Irq {
    Uart0Rx = 0,
}

// SAFETY: `Irq` is an enum of the board's interrupt lines, each a distinct constant
// number, which is what `InterruptNumber` asks of an implementor.
unsafe impl InterruptNumber for Irq {
    fn number(self) -> u16 {
        self as u16
    }
}

#[entry]
fn main() -> ! {
    // `take` succeeds once, and this is the first call.
    let mut core = cortex_m::Peripherals::take().expect("core peripherals");
    clock::start(&mut core.SYST, CORE_HZ);

    // SAFETY: each UART is constructed exactly once, here, at its own base address.
    let (mut line, mut out) = unsafe { (Uart::new(uart::UART0), Uart::new(uart::UART1)) };
    out.enable(BAUDDIV, false);
    line.enable(BAUDDIV, true);
    // SAFETY: unmasking an interrupt can break a critical section that relies on it being
    // masked; there is none (the handler only acknowledges the UART, see DefaultHandler).
    unsafe { NVIC::unmask(Irq::Uart0Rx) };

    // The session and the driver's buffers live in statics (counted by `size` as .bss), not
    // on the stack. `singleton!` hands each out once.
    let link: &'static mut Link =
        cortex_m::singleton!(: Link = Link::new(link_config())).expect("first use");
    let runner: &'static mut Runner<RX, TX> =
        cortex_m::singleton!(: Runner<RX, TX> = Runner::new()).expect("first use");
    let mut committer = HexLines::new(out);
    let mut clock = clock::Millis::default();

    // Neither can end: the UARTs' errors are `Infallible`, and `run` loops forever.
    let Err(never) = runner.run(
        link,
        &mut line,
        &mut clock,
        &mut committer,
        cortex_m::asm::wfi,
    );
    match never {}
}

#[exception]
fn SysTick() {
    clock::tick();
}

/// Every device interrupt lands here (cortex-m-rt without a device crate); only UART0's
/// receive interrupt is enabled. It just wakes the core from `wfi`: the byte stays in the
/// UART for the main loop.
#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    if irqn == Irq::Uart0Rx as i16 {
        uart::clear_rx_interrupt(uart::UART0);
    }
}
