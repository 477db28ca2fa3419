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

pub(crate) fn check_free(dir: &Path, min_free: u64) -> std::io::Result<Result<(), FullReason>> {
    if min_free == 0 {
        return Ok(Ok(()));
    }
    let available = available(dir)?;
    Ok(if available < min_free {
        Err(FullReason::DiskFree {
            available,
            min_free,
        })
    } else {
        Ok(())
    })
}
