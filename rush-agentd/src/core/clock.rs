//! The daemon's two clocks: CLOCK_BOOTTIME (what the kernel programs compare expiries
//! with) and Unix time (what people and the store read).

use std::time::{SystemTime, UNIX_EPOCH};

/// clock_gettime(CLOCK_BOOTTIME) in ns: the clock `bpf_ktime_get_boot_ns` reads, against
/// which the kernel grant map's expiries is compared.
pub fn boot_time_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME always exists on Linux.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_BOOTTIME)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// This boot's id (empty if unreadable): what rows valid for one boot only
/// (pids, pidfds, CLOCK_BOOTTIME times) are checked against.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
