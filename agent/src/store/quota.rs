//! Limits: the `max_bytes` quota over everything kept, and `min_free` on the file system.

use std::path::Path;

/// Bytes charged per stored message on top of its bytes and meta: header, index entries
/// and engine overhead (sled writes ~4 KB per 1 KiB message, but reuses the space after
/// deletion; this is the steady-state share, not the write amplification).
pub(crate) const PER_MESSAGE_OVERHEAD: u64 = 256;

/// Why the store refuses a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FullReason {
    /// Everything kept plus this message would exceed `max_bytes`.
    Quota {
        used: u64,
        needed: u64,
        max_bytes: u64,
    },
    /// The file system holding the store has less than `min_free` available.
    DiskFree { available: u64, min_free: u64 },
}

impl std::fmt::Display for FullReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FullReason::Quota {
                used,
                needed,
                max_bytes,
            } => {
                write!(
                    f,
                    "quota reached: {used} bytes kept + {needed} needed > max_bytes {max_bytes}"
                )
            }
            FullReason::DiskFree {
                available,
                min_free,
            } => {
                write!(
                    f,
                    "disk almost full: {available} bytes available < min_free {min_free}"
                )
            }
        }
    }
}

/// Bytes available to unprivileged writers on the file system holding `dir`.
pub(crate) fn available(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// `Ok` when `needed` more bytes fit in the quota.
pub(crate) fn check_quota(used: u64, needed: u64, max_bytes: u64) -> Result<(), FullReason> {
    if used.saturating_add(needed) > max_bytes {
        Err(FullReason::Quota {
            used,
            needed,
            max_bytes,
        })
    } else {
        Ok(())
    }
}

/// How often the file system is asked for its free space while writes come in.
pub(crate) const FREE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// ... or after this many bytes were charged since the last answer.
pub(crate) const FREE_CHECK_BYTES: u64 = 1 << 20;

/// The `min_free` check without a `statvfs` per message: the file system is asked at most
/// once per [`FREE_CHECK_EVERY`] or per [`FREE_CHECK_BYTES`] charged; in between, its last
/// answer less the bytes charged since stands in for it (an over-estimate of what was
/// used: the check errs on the safe side). A refusal is always confirmed by a fresh
/// answer first.
#[derive(Debug, Default)]
pub(crate) struct FreeSpace {
    last: Option<(std::time::Instant, u64)>,
    charged: u64,
    /// `statvfs` calls so far (for tests and figures).
    pub(crate) checks: u64,
}

impl FreeSpace {
    fn ask(&mut self, dir: &Path) -> std::io::Result<u64> {
        let a = available(dir)?;
        self.checks += 1;
        self.last = Some((std::time::Instant::now(), a));
        self.charged = 0;
        Ok(a)
    }

    /// `Ok(Ok(()))` when `needed` more bytes leave at least `min_free` on the disk.
    pub(crate) fn check(
        &mut self,
        dir: &Path,
        min_free: u64,
        needed: u64,
    ) -> std::io::Result<Result<(), FullReason>> {
        if min_free == 0 {
            return Ok(Ok(()));
        }
        let fresh = match self.last {
            Some((at, _)) => at.elapsed() < FREE_CHECK_EVERY && self.charged < FREE_CHECK_BYTES,
            None => false,
        };
        let mut available = match (fresh, self.last) {
            (true, Some((_, a))) => a.saturating_sub(self.charged),
            _ => self.ask(dir)?,
        };
        if available < min_free && fresh {
            available = self.ask(dir)?;
        }
        if available < min_free {
            return Ok(Err(FullReason::DiskFree {
                available,
                min_free,
            }));
        }
        self.charged = self.charged.saturating_add(needed);
        Ok(Ok(()))
    }
}
