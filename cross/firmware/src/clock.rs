//! Milliseconds from SysTick: the core timer interrupts every millisecond and the handler
//! counts; [`Millis`] widens the 32-bit count to the hal's 64-bit `Instant`.

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use labagent_hal::drive::Clock;
use labagent_hal::time::Instant;

/// Milliseconds since `start`, wrapping after 49.7 days (widened by [`Millis`]).
static TICKS: AtomicU32 = AtomicU32::new(0);

/// Starts the 1 ms tick from the core clock (`core_hz`; AN385: 25 MHz).
pub fn start(syst: &mut SYST, core_hz: u32) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(core_hz / 1000 - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

/// From the SysTick exception handler.
pub fn tick() {
    TICKS.fetch_add(1, Ordering::Relaxed);
}

/// The hal's clock. Called far more often than every 49 days, it sees each wrap of the
/// 32-bit count and carries it into the high word.
#[derive(Default)]
pub struct Millis {
    last: u32,
    high: u64,
}

impl Clock for Millis {
    fn now(&mut self) -> Instant {
        let t = TICKS.load(Ordering::Relaxed);
        if t < self.last {
            self.high += 1 << 32;
        }
        self.last = t;
        Instant::from_millis(self.high + u64::from(t))
    }
}
