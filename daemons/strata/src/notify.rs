//! systemd's service notification protocol (sd_notify(3)), without libsystemd:
//! `READY=1` once every process is ready and linked, `WATCHDOG=1` at half the
//! watchdog interval while the supervisor's loop runs, `STOPPING=1` on shutdown.
//! The socket's address comes from `NOTIFY_SOCKET`, read before the environment is
//! cleared; with no such variable (not under systemd) nothing is sent.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, String)>,
    /// Half of `WATCHDOG_USEC`.
    watchdog_every: Option<Duration>,
    next_watchdog: Option<Instant>,
    ready_sent: bool,
}

impl Notifier {
    /// Read `NOTIFY_SOCKET` and `WATCHDOG_USEC` (call before clearing the environment).
    pub fn from_environment() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty());
        let watchdog_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&us| us > 0)
            .map(|us| Duration::from_micros(us / 2));
        let target = socket.and_then(|path| UnixDatagram::unbound().ok().map(|s| (s, path)));
        Notifier {
            target,
            watchdog_every,
            next_watchdog: watchdog_every.map(|d| Instant::now() + d),
            ready_sent: false,
        }
    }

    fn send(&self, message: &str) {
        let Some((socket, path)) = &self.target else { return };
        let result = match path.strip_prefix('@') {
            // An abstract socket name (Linux).
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
            }
            None => socket.send_to(message.as_bytes(), path),
        };
        if let Err(e) = result {
            tracing::warn!("sd_notify {message:?}: {e}");
        }
    }

    /// Tell systemd the appliance is up (once).
    pub fn ready(&mut self, status: &str) {
        if !self.ready_sent {
            self.ready_sent = true;
            self.send(&format!("READY=1\nSTATUS={status}"));
        }
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// When the next watchdog ping is due.
    pub fn next_watchdog(&self) -> Option<Instant> {
        self.next_watchdog
    }

    /// Ping the watchdog if it is due.
    pub fn watchdog(&mut self) {
        if let (Some(every), Some(at)) = (self.watchdog_every, self.next_watchdog)
            && Instant::now() >= at
        {
            self.send("WATCHDOG=1");
            self.next_watchdog = Some(Instant::now() + every);
        }
    }
}
