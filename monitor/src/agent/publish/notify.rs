//! The systemd notification protocol (`Type=notify`, `WatchdogSec=`) through
//! the `sd-notify` crate: `READY=1` once the hooks are attached and the
//! control socket listens, `WATCHDOG=1` from the sweep loop, `STOPPING=1` on
//! the way out. Without `NOTIFY_SOCKET` (not started by systemd) every call
//! is a no-op.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Sends `states`; a failure is logged, never fatal (the service manager
/// then restarts or times the agent out, which is the right outcome).
fn send(what: &str, states: &[NotifyState]) {
    match sd_notify::notify(false, states) {
        Ok(()) => tracing::debug!("sd_notify: {what}"),
        Err(e) => tracing::warn!("sd_notify {what}: {e}"),
    }
}

/// Start-up finished: `READY=1` with a status line.
pub fn ready(status: &str) {
    send(
        "READY=1",
        &[NotifyState::Ready, NotifyState::Status(status)],
    );
}

/// Shutting down: `STOPPING=1`.
pub fn stopping() {
    send("STOPPING=1", &[NotifyState::Stopping]);
}

/// The watchdog systemd asked for, if any: `WATCHDOG_USEC` set to a positive
/// number and `WATCHDOG_PID` absent or this process (as `sd_watchdog_enabled`
/// reads them).
#[derive(Debug)]
pub struct Watchdog {
    /// How often to ping: half of `WATCHDOG_USEC`.
    every: Duration,
    last: Option<Instant>,
}

impl Watchdog {
    /// From this process's environment.
    pub fn from_env() -> Option<Self> {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Self::from_vars(usec.as_deref(), pid.as_deref(), std::process::id())
    }

    fn from_vars(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Self> {
        let usec: u64 = match usec?.trim().parse() {
            Ok(u) if u > 0 => u,
            _ => {
                tracing::warn!("ignoring WATCHDOG_USEC={usec:?}: not a positive number");
                return None;
            }
        };
        if let Some(pid) = pid {
            if pid.trim().parse::<u32>().ok() != Some(own_pid) {
                tracing::info!("WATCHDOG_PID={pid} is another process: no watchdog pings");
                return None;
            }
        }
        Some(Watchdog {
            every: Duration::from_micros(usec / 2).max(Duration::from_millis(1)),
            last: None,
        })
    }

    /// How often pings are due.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// Whether a ping is due at `now` (the first one always is); records it.
    fn due(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }

    /// Sends `WATCHDOG=1` when half the watchdog interval has passed since
    /// the last one. Called after every sweep.
    pub fn tick(&mut self) {
        if self.due(Instant::now()) {
            send("WATCHDOG=1", &[NotifyState::Watchdog]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_from_the_environment() {
        assert!(Watchdog::from_vars(None, None, 7).is_none());
        assert!(Watchdog::from_vars(Some("0"), None, 7).is_none());
        assert!(Watchdog::from_vars(Some("soon"), None, 7).is_none());
        assert!(Watchdog::from_vars(Some("30000000"), Some("8"), 7).is_none());
        let w = Watchdog::from_vars(Some("30000000"), None, 7).expect("enabled");
        assert_eq!(w.every(), Duration::from_secs(15));
        let w = Watchdog::from_vars(Some("2000000"), Some("7"), 7).expect("enabled");
        assert_eq!(w.every(), Duration::from_secs(1));
    }

    #[test]
    fn pings_at_half_the_interval() {
        let mut w = Watchdog::from_vars(Some("2000000"), None, 1).expect("enabled");
        let t0 = Instant::now();
        assert!(w.due(t0));
        assert!(!w.due(t0 + Duration::from_millis(500)));
        assert!(!w.due(t0 + Duration::from_millis(999)));
        assert!(w.due(t0 + Duration::from_millis(1000)));
        assert!(!w.due(t0 + Duration::from_millis(1500)));
        assert!(w.due(t0 + Duration::from_millis(2100)));
    }

    #[test]
    fn no_socket_is_a_no_op() {
        // NOTIFY_SOCKET is not set under `cargo test`; nothing is sent and
        // nothing fails.
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            ready("test");
            stopping();
        }
    }
}
