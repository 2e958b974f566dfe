//! The NTP load generator: paced, open-loop NTP v4 client requests from many
//! source ports, replies matched to requests by their origin timestamp.
//!
//! One sender thread sends on schedule whether or not replies came (that is how
//! loss shows), in `sendmmsg` batches, round-robin over the sockets; one receiver
//! thread drains every socket with `recvmmsg`. Each request's transmit timestamp is
//! a sequence number (`run << 40 | index`) that the server echoes as the origin
//! timestamp, so every reply finds its request, and a late reply to an earlier run
//! is not counted. Response time is CLOCK_MONOTONIC (`Instant`) from just before the
//! request's `sendmmsg` to just after the reply's `recvmmsg`.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrIn, recvmmsg, sendmmsg, setsockopt, sockopt};

/// NTP header length: every request is exactly this long.
const LEN: usize = 48;
/// Most requests handed to one `sendmmsg`.
const SEND_BATCH: usize = 32;
/// Most replies taken by one `recvmmsg`.
const RECV_BATCH: usize = 64;
/// The sequence number's low bits hold the request index, the high bits the run.
const INDEX_BITS: u32 = 40;
/// Most requests one step may send (bounds the send-time table: 8 bytes each).
pub const MAX_REQUESTS: u64 = 1 << 26;

/// One step of load.
#[derive(Clone, Debug)]
pub struct Load {
    /// The server (or sink) to send to.
    pub target: SocketAddrV4,
    /// The address the generator's sockets bind to (port 0: the kernel picks).
    pub source: SocketAddrV4,
    /// Requests per second.
    pub rate: u64,
    pub duration: Duration,
    /// How many sockets (source ports) the requests are spread over.
    pub sockets: usize,
    /// How long after the last request a reply still counts.
    pub grace: Duration,
    /// Tells this step's replies from late replies to an earlier step (1..=0xFFFFFF).
    pub run: u32,
}

/// What one step measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub target_rate: u64,
    /// Requests the kernel accepted.
    pub sent: u64,
    /// Requests due that could not be sent (send error or the generator fell behind).
    pub unsent: u64,
    /// The step's length (offered rate = sent / this).
    pub send_span: Duration,
    /// Replies matched to a request of this step, within the grace period.
    pub answered: u64,
    /// Replies that matched no outstanding request of this step (duplicates, late
    /// replies to an earlier step, garbage).
    pub unmatched: u64,
    /// Response times of the answered requests, sorted, in nanoseconds.
    pub latencies_ns: Vec<u64>,
}

impl Outcome {
    /// Requests per second actually sent.
    pub fn offered_rate(&self) -> f64 {
        self.sent as f64 / self.send_span.as_secs_f64().max(1e-9)
    }

    pub fn answered_rate(&self) -> f64 {
        self.answered as f64 / self.send_span.as_secs_f64().max(1e-9)
    }

    /// Share of the requests sent that were not answered, in percent.
    pub fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            100.0
        } else {
            100.0 * (self.sent - self.answered.min(self.sent)) as f64 / self.sent as f64
        }
    }

    /// Response time at quantile `q` (0..=1), in microseconds.
    pub fn latency_us(&self, q: f64) -> Option<f64> {
        let n = self.latencies_ns.len();
        if n == 0 {
            return None;
        }
        let i = ((n as f64 * q) as usize).min(n - 1);
        Some(self.latencies_ns[i] as f64 / 1000.0)
    }
}

/// Open the generator's sockets: bound to `source` (port 0), connected to `target`,
/// non-blocking, with receive buffers large enough that the generator does not drop
/// replies itself.
fn open_sockets(load: &Load) -> io::Result<Vec<UdpSocket>> {
    (0..load.sockets)
        .map(|_| {
            let socket = UdpSocket::bind(SocketAddr::V4(load.source))?;
            socket.connect(SocketAddr::V4(load.target))?;
            socket.set_nonblocking(true)?;
            // Capped by net.core.rmem_max; a failure only means the default size.
            let _ = setsockopt(&socket, sockopt::RcvBuf, &(4 << 20));
            Ok(socket)
        })
        .collect()
}

/// An NTP v4 client request whose transmit timestamp is `seq`.
fn request(seq: u64) -> [u8; LEN] {
    let mut packet = [0u8; LEN];
    packet[0] = (4 << 3) | 3; // LI 0, VN 4, mode 3 (client)
    packet[2] = 6; // poll 2^6 s, as a client would say
    packet[40..48].copy_from_slice(&seq.to_be_bytes());
    packet
}

/// The origin timestamp of a server reply (mode 4), if `packet` is one.
fn reply_origin(packet: &[u8]) -> Option<u64> {
    if packet.len() < LEN || packet[0] & 7 != 4 {
        return None;
    }
    Some(u64::from_be_bytes(packet[24..32].try_into().ok()?))
}

/// Run one step: send `rate × duration` requests on schedule, collect the replies.
pub fn run(load: &Load) -> io::Result<Outcome> {
    let total = (u128::from(load.rate) * load.duration.as_nanos() / 1_000_000_000) as u64;
    if total == 0 || total > MAX_REQUESTS {
        return Err(io::Error::other(format!("{} requests in one step: must be 1..={MAX_REQUESTS}", total)));
    }
    let sockets = open_sockets(load)?;
    // Send time of request i, as nanoseconds since `start` + 1; 0 = not outstanding.
    let sent_at: Vec<AtomicU64> = (0..total).map(|_| AtomicU64::new(0)).collect();
    let sending_done = AtomicBool::new(false);
    let start = Instant::now();
    let run_tag = u64::from(load.run & 0xFF_FFFF) << INDEX_BITS;

    std::thread::scope(|scope| {
        let receiver = scope.spawn(|| receive(&sockets, &sent_at, &sending_done, start, run_tag, load.grace));
        let sending = send(load, total, &sockets, &sent_at, start, run_tag);
        sending_done.store(true, Ordering::Release);
        let (answered, unmatched, mut latencies_ns) = receiver.join().expect("receiver thread");
        let (sent, unsent, send_span) = sending?;
        latencies_ns.sort_unstable();
        Ok(Outcome { target_rate: load.rate, sent, unsent, send_span, answered, unmatched, latencies_ns })
    })
}

/// The sender: returns (sent, unsent, the step's length).
fn send(
    load: &Load,
    total: u64,
    sockets: &[UdpSocket],
    sent_at: &[AtomicU64],
    start: Instant,
    run_tag: u64,
) -> io::Result<(u64, u64, Duration)> {
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(SEND_BATCH, None);
    let no_address: [Option<SockaddrIn>; SEND_BATCH] = [None; SEND_BATCH];
    let mut packets = [[0u8; LEN]; SEND_BATCH];
    // The sender stops at the end of the step even if it fell behind: what it could
    // not send then shows as offered < target.
    let deadline = load.duration;
    let ns_per_request = 1e9 / load.rate as f64;
    let (mut next, mut sent, mut unsent, mut batch_no) = (0u64, 0u64, 0u64, 0usize);
    while next < total {
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            break;
        }
        // Requests due by now (request i is due at i × ns_per_request).
        let due = ((elapsed.as_nanos() as f64 / ns_per_request) as u64 + 1).min(total);
        if due <= next {
            let wait_ns = ((next as f64 * ns_per_request) as u64).saturating_sub(elapsed.as_nanos() as u64);
            std::thread::sleep(Duration::from_nanos(wait_ns.min(1_000_000)));
            continue;
        }
        let n = ((due - next) as usize).min(SEND_BATCH);
        for (i, packet) in packets[..n].iter_mut().enumerate() {
            *packet = request(run_tag | (next + i as u64));
        }
        let socket = &sockets[batch_no % sockets.len()];
        batch_no += 1;
        let stamp = start.elapsed().as_nanos() as u64 + 1;
        for slot in &sent_at[next as usize..next as usize + n] {
            slot.store(stamp, Ordering::Release);
        }
        let slices: Vec<[IoSlice<'_>; 1]> = packets[..n].iter().map(|p| [IoSlice::new(p)]).collect();
        let accepted =
            match sendmmsg(socket.as_raw_fd(), &mut headers, &slices, &no_address[..n], [], MsgFlags::empty()) {
                Ok(results) => results.count(),
                // The kernel's queue is full, or an ICMP error (no server) surfaced here.
                Err(Errno::EAGAIN | Errno::ENOBUFS | Errno::ECONNREFUSED) => 0,
                Err(e) => return Err(io::Error::other(format!("sendmmsg: {e}"))),
            };
        for slot in &sent_at[next as usize + accepted..next as usize + n] {
            slot.store(0, Ordering::Release);
        }
        sent += accepted as u64;
        unsent += (n - accepted) as u64;
        next += n as u64;
    }
    unsent += total - next;
    Ok((sent, unsent, load.duration))
}

/// The receiver: drains every socket until `grace` after the sender is done.
/// Returns (answered, unmatched, latencies in ns).
fn receive(
    sockets: &[UdpSocket],
    sent_at: &[AtomicU64],
    sending_done: &AtomicBool,
    start: Instant,
    run_tag: u64,
    grace: Duration,
) -> (u64, u64, Vec<u64>) {
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(RECV_BATCH, None);
    let mut buffers = vec![[0u8; 64]; RECV_BATCH];
    let mut latencies = Vec::with_capacity(sent_at.len());
    let (mut answered, mut unmatched) = (0u64, 0u64);
    let mut stop_at: Option<Instant> = None;
    loop {
        match stop_at {
            Some(t) if Instant::now() >= t => break,
            None if sending_done.load(Ordering::Acquire) => stop_at = Some(Instant::now() + grace),
            _ => {}
        }
        // Wait for replies on any socket, then read only the sockets that have some.
        let ready: Vec<usize> = {
            let mut fds: Vec<PollFd<'_>> = sockets.iter().map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN)).collect();
            match poll(&mut fds, PollTimeout::from(1u16)) {
                Ok(n) if n > 0 => fds
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
                    .map(|(i, _)| i)
                    .collect(),
                _ => continue,
            }
        };
        for socket in ready.into_iter().map(|i| &sockets[i]) {
            // Bounded: a socket is left after 64 batches so that none starves the rest.
            for _ in 0..64 {
                let mut slices: Vec<[IoSliceMut<'_>; 1]> =
                    buffers.iter_mut().map(|b| [IoSliceMut::new(&mut b[..])]).collect();
                let results =
                    match recvmmsg(socket.as_raw_fd(), &mut headers, slices.iter_mut(), MsgFlags::MSG_DONTWAIT, None) {
                        Ok(r) => r,
                        Err(_) => break, // EAGAIN, or an ICMP error reported on the socket
                    };
                let received_at = start.elapsed().as_nanos() as u64 + 1;
                let lens: Vec<usize> = results.map(|m| m.bytes).collect();
                for (buffer, &len) in buffers.iter().zip(&lens) {
                    let matched = reply_origin(&buffer[..len.min(buffer.len())])
                        .filter(|seq| seq & !((1 << INDEX_BITS) - 1) == run_tag)
                        .and_then(|seq| sent_at.get((seq & ((1 << INDEX_BITS) - 1)) as usize))
                        .map(|slot| slot.swap(0, Ordering::AcqRel))
                        .filter(|&stamp| stamp != 0);
                    match matched {
                        Some(stamp) => {
                            answered += 1;
                            latencies.push(received_at.saturating_sub(stamp));
                        }
                        None => unmatched += 1,
                    }
                }
                if lens.len() < RECV_BATCH {
                    break;
                }
            }
        }
    }
    (answered, unmatched, latencies)
}

/// A UDP sink: a bound socket nobody reads, so that datagrams sent to it are
/// delivered and dropped by the kernel at the cheapest point. Measures what the
/// generator alone can offer.
pub fn sink(address: SocketAddrV4) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::V4(address))?;
    let _ = setsockopt(&socket, sockopt::RcvBuf, &4096);
    Ok(socket)
}

/// Whether an NTP server answers at `target` (one request, up to `timeout`).
pub fn probe(source: SocketAddrV4, target: SocketAddrV4, timeout: Duration) -> bool {
    let Ok(socket) = UdpSocket::bind(SocketAddr::V4(source)) else { return false };
    if socket.connect(SocketAddr::V4(target)).is_err() || socket.set_read_timeout(Some(timeout)).is_err() {
        return false;
    }
    let seq = 0xFF_FFFF_u64 << INDEX_BITS | 0x5EED;
    if socket.send(&request(seq)).is_err() {
        return false;
    }
    let mut buffer = [0u8; 1024];
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match socket.recv(&mut buffer) {
            Ok(n) if reply_origin(&buffer[..n]) == Some(seq) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_a_v4_client_packet_carrying_the_sequence() {
        let p = request(0x0102_0304_0506_0708);
        assert_eq!(p[0], 0x23);
        assert_eq!(&p[40..48], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(p[24..40].iter().all(|&b| b == 0), "origin and receive timestamps are zero");
    }

    #[test]
    fn reply_origin_needs_mode_4_and_a_full_header() {
        let mut reply = [0u8; LEN];
        reply[0] = 0x24;
        reply[24..32].copy_from_slice(&7u64.to_be_bytes());
        assert_eq!(reply_origin(&reply), Some(7));
        assert_eq!(reply_origin(&reply[..47]), None);
        reply[0] = 0x23;
        assert_eq!(reply_origin(&reply), None);
    }

    #[test]
    fn quantiles() {
        let o = Outcome { latencies_ns: (1..=100).map(|i| i * 1000).collect(), ..Outcome::default() };
        assert_eq!(o.latency_us(0.5), Some(51.0));
        assert_eq!(o.latency_us(0.99), Some(100.0));
        assert_eq!(Outcome::default().latency_us(0.5), None);
    }
}
