//! SIGINT/SIGTERM turned into a flag that loops poll.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static FLAG: OnceLock<&'static AtomicBool> = OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    if let Some(f) = FLAG.get() {
        f.store(true, Ordering::SeqCst);
    }
}

/// Sets `flag` when SIGINT or SIGTERM arrives (the handler only stores to an atomic, which is signal-safe).
pub fn stop_on_signals(flag: &'static AtomicBool) -> std::io::Result<()> {
    let _ = FLAG.set(flag);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `on_signal` is async-signal-safe (one atomic store); sigaction is given a zeroed, then filled,
        // struct that lives across the call.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}
