//! The serving threads. Each owns one SO_REUSEPORT socket and answers in
//! batches: a blocking `recvmmsg` (MSG_WAITFORONE: wake for the first request,
//! take all that are queued) → [`server::respond`] → `sendmmsg`. T2 is the
//! kernel's receive timestamp (SO_TIMESTAMPING, software); the answers go out in
//! chunks of [`SEND_CHUNK`], each stamped with its own clock read just before its
//! `sendmmsg`, plus the delay the kernel's transmit timestamps have shown between
//! such a read and the datagram leaving ([`crate::send_delay`]). The kernel's
//! transmit timestamp of each answer to an
//! interleaved request is read back from the socket's error queue after the send
//! (OPT_ID numbers the datagrams, OPT_TSONLY leaves the payload out) and handed to
//! the client in its next exchange ([`crate::interleave`]). Buffers are allocated
//! once per thread; nothing is allocated per packet.
//!
//! The threads are started before the sandbox (so that seccomp's TSYNC covers
//! them) but read nothing until [`Shared::release`] is called after it.

use std::hash::BuildHasher;
use std::io::{IoSlice, IoSliceMut};
use std::net::IpAddr;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, recvmsg, sendmmsg,
};
use nix::sys::time::TimeSpec;
use strata_proto::access::AccessList;
use strata_proto::ipc::{ClientActivity, MAX_CLIENTS_REPORTED, NtpSettings, ServerStats};
use strata_proto::ntp::{HEADER_LEN, NtpTimestamp};
use tracing::warn;

use crate::clientlog::{ClientLog, RateLimit, Verdict};
use crate::interleave::{self, TimestampSource, TxTimestamps};
use crate::nic_clock::NicClock;
use crate::send_delay::SendDelay;
use crate::server::{self, ServerState};

/// The client log is split in shards by address, each behind its own lock, so that
/// the serving threads rarely wait for each other.
const CLIENT_LOG_SHARDS: usize = 16;

/// The interleaved-mode map is cut in shards too, by receive timestamp: a client's
/// next request may reach another thread (a new source port, another socket).
const TX_TIMESTAMP_SHARDS: usize = 16;

/// The client log's memory limit (clientloglimit) covers the interleaved-mode map
/// too: it takes half, 8192 answers at the default 512 KiB (chrony keeps as many
/// answers as clients, 4096 of each at its default).
const TX_TIMESTAMPS_SHARE: usize = 2;

/// Answers to interleaved requests whose kernel transmit timestamp is still awaited,
/// per thread; older ones are given up.
const PENDING_TX: usize = 4 * BATCH;

/// Chunks sent whose position delays are still being read back.
const SENT_BATCHES: usize = PENDING_TX;

/// Answers sent per `sendmmsg`, each chunk stamped with its own clock read. One:
/// the k-th answer of a longer chunk leaves after k others' trip through the stack,
/// and that spread was most of the basic-mode transmit error (ntpperf: standard
/// deviation up to 25 µs with 32, 0.9–2.6 µs with 1); a syscall per answer still
/// serves 300 000/s loss-free on this 2-core machine (BENCHMARKS.md).
const SEND_CHUNK: usize = 1;

/// Requests taken from the kernel per `recvmmsg`.
const BATCH: usize = 32;
/// Longest request read; longer ones are truncated by the kernel and dropped. An
/// NTP request with NTS extension fields stays far below this.
const MAX_REQUEST: usize = 1024;

/// What the serving threads share with the engine's main thread.
#[derive(Debug)]
pub struct Shared {
    /// What every answer says about our clock; the main thread updates it.
    pub serving: RwLock<ServerState>,
    /// The clock the answers are stamped from.
    time: TimeSource,
    /// chrony's allow/deny rules: the configured ones, then the operators'
    /// (`stratactl allow/deny`), in order; the main thread replaces the list.
    access: RwLock<(Vec<String>, AccessList)>,
    clients: Box<[Mutex<ClientLog>]>,
    tx_timestamps: Box<[Mutex<TxTimestamps>]>,
    /// The sockets queue the kernel's transmit timestamps (`kernel-tx-timestamps`).
    pub kernel_tx_timestamps: bool,
    /// The PHCs of the interfaces whose NICs stamp packets (`hwtimestamp`); the
    /// main thread reads them, the serving threads convert with them.
    pub nic_clocks: Vec<NicClock>,
    /// Picks a client's shard; random per process.
    shard_hasher: std::collections::hash_map::RandomState,
    /// The client log's clock: monotonic, so rate limits ignore clock steps.
    started: Instant,
    counters: Vec<Counters>,
    released: (Mutex<bool>, Condvar),
}

/// One thread's counters, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Counters {
    received: AtomicU64,
    answered: AtomicU64,
    malformed: AtomicU64,
    not_client: AtomicU64,
    denied: AtomicU64,
    rate_limited: AtomicU64,
    kod_sent: AtomicU64,
    send_failed: AtomicU64,
    rx_kernel: AtomicU64,
    tx_kernel: AtomicU64,
    rx_hardware: AtomicU64,
    tx_hardware: AtomicU64,
    interleaved: AtomicU64,
}

impl Shared {
    pub fn new(
        serving: ServerState,
        settings: &NtpSettings,
        time: TimeSource,
        nic_clocks: Vec<NicClock>,
        threads: usize,
    ) -> Result<Arc<Shared>, String> {
        let access = AccessList::parse(&settings.access).map_err(|e| format!("access rules: {e}"))?;
        let limit = settings.ratelimit.map(|r| RateLimit {
            interval_log2: r.interval_log2,
            burst: r.burst,
            leak_log2: r.leak_log2,
            kod_log2: r.kod_log2,
        });
        let limit_bytes = usize::try_from(settings.client_log_limit_bytes).unwrap_or(usize::MAX);
        let shard_bytes = (limit_bytes - limit_bytes / TX_TIMESTAMPS_SHARE) / CLIENT_LOG_SHARDS;
        let shard_hasher = std::collections::hash_map::RandomState::new();
        let clients = (0..CLIENT_LOG_SHARDS)
            .map(|i| Mutex::new(ClientLog::new(shard_bytes, limit, shard_hasher.hash_one(i))))
            .collect();
        let tx_entries = limit_bytes / TX_TIMESTAMPS_SHARE / interleave::ENTRY_BYTES / TX_TIMESTAMP_SHARDS;
        let tx_timestamps = (0..TX_TIMESTAMP_SHARDS).map(|_| Mutex::new(TxTimestamps::new(tx_entries))).collect();
        Ok(Arc::new(Shared {
            serving: RwLock::new(serving),
            time,
            access: RwLock::new((settings.access.clone(), access)),
            clients,
            tx_timestamps,
            kernel_tx_timestamps: settings.kernel_tx_timestamps,
            nic_clocks,
            shard_hasher,
            started: Instant::now(),
            counters: (0..threads).map(|_| Counters::default()).collect(),
            released: (Mutex::new(false), Condvar::new()),
        }))
    }

    /// The served clock minus the system clock at `system_ns`, seconds.
    pub fn time_offset_s(&self, system_ns: i64) -> f64 {
        self.time.offset_s(system_ns)
    }

    /// Append an operator's rule (`allow`: "allow RULE", else "deny RULE");
    /// a rule that does not parse changes nothing.
    pub fn add_access_rule(&self, allow: bool, rule: &str) -> Result<(), String> {
        let mut access = self.access.write().unwrap_or_else(|e| e.into_inner());
        let mut rules = access.0.clone();
        rules.push(format!("{} {rule}", if allow { "allow" } else { "deny" }));
        let list = AccessList::parse(&rules).map_err(|e| e.to_string())?;
        *access = (rules, list);
        Ok(())
    }

    fn tx_timestamps(&self, receive: NtpTimestamp) -> std::sync::MutexGuard<'_, TxTimestamps> {
        let shard = (self.shard_hasher.hash_one(receive.to_bits()) % TX_TIMESTAMP_SHARDS as u64) as usize;
        self.tx_timestamps[shard].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn client_log(&self, client: IpAddr) -> &Mutex<ClientLog> {
        &self.clients[(self.shard_hasher.hash_one(client) % CLIENT_LOG_SHARDS as u64) as usize]
    }

    /// The busiest clients in the log, at most [`MAX_CLIENTS_REPORTED`].
    pub fn busiest_clients(&self) -> Vec<ClientActivity> {
        let now_ns = self.started.elapsed().as_nanos() as u64;
        let mut all: Vec<ClientActivity> = Vec::new();
        for shard in self.clients.iter() {
            let log = shard.lock().unwrap_or_else(|e| e.into_inner());
            all.extend(log.clients().map(|c| ClientActivity {
                address: c.address,
                ntp_requests: c.ntp_requests,
                dropped: c.dropped,
                interval_log2: c.interval_log2,
                limited_interval_log2: c.limited_interval_log2,
                last_seen_s: c.seconds_since_last(now_ns),
            }));
        }
        all.sort_by_key(|c| std::cmp::Reverse(c.ntp_requests));
        all.truncate(MAX_CLIENTS_REPORTED);
        all
    }

    /// Clients in the log and the bytes the log holds, over all shards, with the
    /// interleaved-mode map's.
    pub fn client_log_size(&self) -> (u64, u64) {
        let (n, bytes) = self.clients.iter().fold((0, 0), |(n, bytes), shard| {
            let log = shard.lock().unwrap_or_else(|e| e.into_inner());
            (n + log.len() as u64, bytes + log.memory_bytes() as u64)
        });
        let map_bytes: usize =
            self.tx_timestamps.iter().map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).memory_bytes()).sum();
        (n, bytes + map_bytes as u64)
    }

    /// Let the threads read from the network: called once the sandbox is in place.
    pub fn release(&self) {
        let (lock, cvar) = &self.released;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cvar.notify_all();
    }

    fn wait_released(&self) {
        let (lock, cvar) = &self.released;
        let mut released = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !*released {
            released = cvar.wait(released).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The NIC clock of the interface a packet came in on (`if_index` from its
    /// pktinfo; 0 when the kernel gave none, which one NIC clock still answers).
    fn nic_clock(&self, if_index: u32) -> Option<&NicClock> {
        match &self.nic_clocks[..] {
            [only] if if_index == 0 => Some(only),
            clocks => clocks.iter().find(|c| c.if_index == if_index),
        }
    }

    /// The sum over all threads.
    pub fn stats(&self) -> ServerStats {
        let mut s = ServerStats::default();
        for c in &self.counters {
            s.received += c.received.load(Ordering::Relaxed);
            s.answered += c.answered.load(Ordering::Relaxed);
            s.malformed += c.malformed.load(Ordering::Relaxed);
            s.not_client += c.not_client.load(Ordering::Relaxed);
            s.denied += c.denied.load(Ordering::Relaxed);
            s.rate_limited += c.rate_limited.load(Ordering::Relaxed);
            s.kod_sent += c.kod_sent.load(Ordering::Relaxed);
            s.send_failed += c.send_failed.load(Ordering::Relaxed);
            s.rx_kernel += c.rx_kernel.load(Ordering::Relaxed);
            s.tx_kernel += c.tx_kernel.load(Ordering::Relaxed);
            s.rx_hardware += c.rx_hardware.load(Ordering::Relaxed);
            s.tx_hardware += c.tx_hardware.load(Ordering::Relaxed);
            s.interleaved += c.interleaved.load(Ordering::Relaxed);
        }
        s.tx_timestamps_held =
            self.tx_timestamps.iter().map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).len() as u64).sum();
        s
    }
}

/// The system clock as an NTP timestamp.
pub fn system_now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// Where the served time comes from (ARCHITECTURE.md, "Keeping time"): the system clock, or the
/// simulated clock's model (a file the supervisor opened, read with one `pread`).
#[derive(Debug)]
pub enum TimeSource {
    System,
    Simulated(std::fs::File),
    /// The PTP hardware clock the adjuster disciplines (the device stays open for
    /// its dynamic clock id to stay valid).
    Phc {
        _device: std::fs::File,
        clock: strata_sys::KernelClock,
    },
}

impl TimeSource {
    /// The served clock minus the system clock at `system_ns`, seconds.
    pub fn offset_s(&self, system_ns: i64) -> f64 {
        if let TimeSource::Phc { clock, .. } = self {
            // PHC minus system, read between two system readings: the PHC's own
            // read latency is then split evenly.
            let before = system_now_ns();
            let Ok(phc) = clock.now_ns() else { return 0.0 };
            let after = system_now_ns();
            return (phc - (before + (after - before) / 2)) as f64 * 1e-9;
        }
        let TimeSource::Simulated(file) = self else { return 0.0 };
        let mut record = [0u8; strata_proto::clock_model::RECORD_LEN];
        // A torn read (the adjuster writing at that moment) is retried.
        for _ in 0..8 {
            if let Ok(n) = std::os::unix::fs::FileExt::read_at(file, &mut record, 0)
                && let Some((_, model)) = strata_proto::clock_model::ClockModel::decode(&record[..n])
            {
                return model.offset_at(system_ns);
            }
        }
        0.0
    }
}

fn shifted(system_ns: i64, offset_s: f64) -> NtpTimestamp {
    NtpTimestamp::from_unix_ns(system_ns + (offset_s * 1e9) as i64)
}

fn timestamp_ns(ts: &TimeSpec) -> i64 {
    ts.tv_sec() * 1_000_000_000 + ts.tv_nsec()
}

/// A timestamp of SO_TIMESTAMPING's three; zero: that one was not taken.
fn nonzero_ns(ts: &TimeSpec) -> Option<i64> {
    Some(timestamp_ns(ts)).filter(|&ns| ns != 0)
}

/// Start serving thread `index` on `socket`; it waits for [`Shared::release`].
/// Returns once the thread runs: the C library's per-thread set-up (rseq, ...) is
/// then done, before the seccomp filter that would refuse it.
pub fn spawn(index: usize, socket: UdpSocket, shared: Arc<Shared>) -> std::io::Result<()> {
    let (running, started) = std::sync::mpsc::sync_channel(0);
    std::thread::Builder::new().name(format!("ntp-serve-{index}")).spawn(move || {
        let _ = running.send(());
        shared.wait_released();
        let mut worker = Worker::new(index, socket, shared);
        loop {
            worker.serve_batch();
        }
    })?;
    started.recv().map_err(std::io::Error::other)
}

/// One request as `recvmmsg` delivered it.
#[derive(Clone, Copy, Default)]
struct Received {
    len: usize,
    client: Option<SockaddrStorage>,
    /// The kernel's receive time (the NIC's mapped, else SO_TIMESTAMPING's
    /// software one), system clock, ns.
    kernel_time: Option<i64>,
    /// `kernel_time` is the NIC's.
    hardware: bool,
    /// The interface it came in on (IP_PKTINFO; 0 without `hwtimestamp`).
    if_index: u32,
    /// Longer than the buffer: not a request we answer.
    truncated: bool,
}

struct Worker {
    index: usize,
    socket: UdpSocket,
    shared: Arc<Shared>,
    requests: Box<[[u8; MAX_REQUEST]; BATCH]>,
    replies: Box<[[u8; HEADER_LEN]; BATCH]>,
    received: Box<[Received; BATCH]>,
    /// Per reply: destination.
    destinations: Box<[Option<SockaddrStorage>; BATCH]>,
    /// Per reply: the receive timestamp to save its transmit time under (an answer
    /// to an interleaved request), and whether it is interleaved (not re-stamped).
    saves: Box<[(Option<NtpTimestamp>, bool); BATCH]>,
    /// The OPT_ID the kernel gives the next datagram sent on this socket.
    next_tx_id: u32,
    /// (OPT_ID, receive timestamp saved, interface whose NIC will stamp it or 0)
    /// of answers awaiting their kernel (and hardware) transmit timestamps.
    pending_tx: std::collections::VecDeque<(u32, NtpTimestamp, u32)>,
    /// Per reply: the interface its request came in on (its NIC stamps the answer).
    interfaces: Box<[u32; BATCH]>,
    /// (OPT_ID of the first datagram, datagrams, the clock read, system ns) of the
    /// last batches sent, to learn each position's delay from.
    sent_batches: std::collections::VecDeque<(u32, u32, i64)>,
    send_delay: SendDelay<SEND_CHUNK>,
    /// For the error queue's messages: the timestamps and the extended error.
    errqueue_cmsgs: Vec<u8>,
    recv_headers: MultiHeaders<SockaddrStorage>,
    send_headers: MultiHeaders<SockaddrStorage>,
    /// xorshift state for the rate limiter's leak and kiss-o'-death draws. Not
    /// security-relevant (chrony draws them with random(3) too): predicting them
    /// wins a client one answer more or less, never a forged one. Cookies and keys
    /// come from getrandom (`strata_sys::random_u64`).
    random: u64,
}

impl Worker {
    fn new(index: usize, socket: UdpSocket, shared: Arc<Shared>) -> Worker {
        Worker {
            index,
            socket,
            shared,
            requests: Box::new([[0; MAX_REQUEST]; BATCH]),
            replies: Box::new([[0; HEADER_LEN]; BATCH]),
            received: Box::new([Received::default(); BATCH]),
            destinations: Box::new([None; BATCH]),
            saves: Box::new([(None, false); BATCH]),
            interfaces: Box::new([0; BATCH]),
            next_tx_id: 0,
            pending_tx: std::collections::VecDeque::with_capacity(PENDING_TX),
            sent_batches: std::collections::VecDeque::with_capacity(SENT_BATCHES),
            send_delay: SendDelay::new(),
            errqueue_cmsgs: nix::cmsg_space!([TimeSpec; 3], nix::libc::sock_extended_err, nix::libc::sockaddr_in6),
            recv_headers: MultiHeaders::preallocate(
                BATCH,
                Some(nix::cmsg_space!([TimeSpec; 3], nix::libc::in6_pktinfo)),
            ),
            send_headers: MultiHeaders::preallocate(BATCH, None),
            random: std::collections::hash_map::RandomState::new().hash_one(index) | 1,
        }
    }

    fn next_random(&mut self) -> u32 {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        (self.random >> 32) as u32
    }

    /// Wait for requests and answer up to [`BATCH`] of them.
    fn serve_batch(&mut self) {
        let fd = self.socket.as_raw_fd();
        let count = {
            let mut iovs = self.requests.each_mut().map(|r| [IoSliceMut::new(r)]);
            match recvmmsg(fd, &mut self.recv_headers, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None) {
                Ok(results) => {
                    let mut n = 0;
                    let now_ns = system_now_ns();
                    for (slot, msg) in self.received.iter_mut().zip(results) {
                        let (mut software, mut raw, mut if_index) = (None, None, 0);
                        for cmsg in msg.cmsgs().into_iter().flatten() {
                            match cmsg {
                                ControlMessageOwned::ScmTimestampsns(ts) => {
                                    software = nonzero_ns(&ts.system);
                                    raw = nonzero_ns(&ts.hw_raw);
                                }
                                ControlMessageOwned::ScmTimestampns(ts) => software = nonzero_ns(&ts),
                                ControlMessageOwned::Ipv4PacketInfo(info) => if_index = info.ipi_ifindex as u32,
                                ControlMessageOwned::Ipv6PacketInfo(info) => if_index = info.ipi6_ifindex,
                                _ => {}
                            }
                        }
                        let hardware_time = raw.and_then(|phc| {
                            self.shared.nic_clock(if_index).filter(|c| c.receive)?.receive_time(phc, now_ns)
                        });
                        *slot = Received {
                            len: msg.bytes,
                            client: msg.address,
                            kernel_time: hardware_time.or(software),
                            hardware: hardware_time.is_some(),
                            if_index,
                            truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
                        };
                        n += 1;
                    }
                    n
                }
                Err(nix::Error::EAGAIN | nix::Error::EINTR) => 0,
                Err(e) => {
                    warn!(thread = self.index, "recvmmsg: {e}");
                    0
                }
            }
        };
        if count == 0 {
            // A transmit timestamp left on the error queue makes every blocking read
            // return EAGAIN at once: drain it, or the thread spins.
            let offset_s = self.shared.time.offset_s(system_now_ns());
            self.read_tx_timestamps(offset_s);
            return;
        }
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters[self.index];
        counters.received.fetch_add(count as u64, Ordering::Relaxed);
        let hardware_stamped = self.received[..count].iter().filter(|r| r.hardware).count();
        let kernel_stamped = self.received[..count].iter().filter(|r| r.kernel_time.is_some()).count();
        counters.rx_kernel.fetch_add((kernel_stamped - hardware_stamped) as u64, Ordering::Relaxed);
        counters.rx_hardware.fetch_add(hardware_stamped as u64, Ordering::Relaxed);
        let state = self.shared.serving.read().unwrap_or_else(|e| e.into_inner()).clone();
        let access = shared.access.read().unwrap_or_else(|e| e.into_inner());
        let system_now = system_now_ns();
        // One model read per batch: the simulated clock moves by ppm, not per packet.
        let clock_offset_s = self.shared.time.offset_s(system_now);
        let fallback_t2 = shifted(system_now, clock_offset_s);
        let now_ns = self.shared.started.elapsed().as_nanos() as u64;
        let mut replies = 0;
        let mut kods = 0;
        for i in 0..count {
            let Received { len, client, kernel_time: t2, truncated, if_index, .. } = self.received[i];
            let Some(ip) = client.as_ref().and_then(ip_of) else {
                counters.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if truncated {
                counters.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // chrony's order: access rules, then the packet, then the rate limit.
            if !access.1.allows(ip) {
                counters.denied.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let reply = &mut self.replies[replies];
            // T3 is stamped over the batch just before sending (below).
            let t2 = t2.map_or(fallback_t2, |ns| shifted(ns, clock_offset_s));
            let previous_tx = |rx| self.shared.tx_timestamps(rx).take(rx).map(|(tx, _)| tx);
            match server::respond(&self.requests[i][..len], t2, fallback_t2, &state, previous_tx, reply) {
                Ok(answer) => {
                    let random = self.next_random();
                    let verdict = self
                        .shared
                        .client_log(ip)
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .on_request(ip, now_ns, random);
                    match verdict {
                        Verdict::Answer => self.saves[replies] = (answer.save_receive, answer.interleaved),
                        Verdict::Drop => {
                            counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Verdict::Kod => {
                            counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                            server::make_rate_kiss(&mut self.replies[replies]);
                            self.saves[replies] = (None, false);
                            kods += 1;
                        }
                    }
                    self.destinations[replies] = client;
                    self.interfaces[replies] = if_index;
                    replies += 1;
                }
                Err(server::Drop::NotAClientRequest(_)) => {
                    counters.not_client.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    counters.malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let mut sent = 0;
        while sent < replies {
            let chunk = sent..(sent + SEND_CHUNK).min(replies);
            let wanted = chunk.len();
            let went = self.send_chunk(chunk, clock_offset_s);
            sent += went;
            if went < wanted {
                break; // the socket's buffer is full: the rest would fail too
            }
        }
        counters.send_failed.fetch_add((replies - sent) as u64, Ordering::Relaxed);
        counters.kod_sent.fetch_add(kods.min(sent) as u64, Ordering::Relaxed);
        counters.answered.fetch_add(sent.saturating_sub(kods) as u64, Ordering::Relaxed);
        self.read_tx_timestamps(clock_offset_s);
    }

    /// Stamp and send the answers `chunk` of this batch; returns how many went out.
    fn send_chunk(&mut self, chunk: std::ops::Range<usize>, clock_offset_s: f64) -> usize {
        let counters = &self.shared.counters[self.index];
        let read_ns = system_now_ns();
        for (k, i) in chunk.clone().enumerate() {
            let t3 = interleave::mark_transmit(shifted(read_ns + self.send_delay.predict(k), clock_offset_s));
            let (save, interleaved) = self.saves[i];
            if !interleaved {
                self.replies[i][40..48].copy_from_slice(&t3.to_bits().to_be_bytes());
            }
            if let Some(receive) = save {
                // The daemon's time until the kernel's arrives.
                self.shared.tx_timestamps(receive).save(receive, t3, TimestampSource::Daemon);
            }
        }
        let iovs: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|k| [IoSlice::new(&self.replies[k])]);
        let no_cmsgs: [ControlMessage<'_>; 0] = [];
        let sent = match sendmmsg(
            self.socket.as_raw_fd(),
            &mut self.send_headers,
            iovs[chunk.clone()].iter(),
            &self.destinations[chunk.clone()],
            no_cmsgs,
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(results) => results.count(),
            Err(e) => {
                warn!(thread = self.index, "sendmmsg: {e}");
                0
            }
        };
        for (k, (save, _)) in self.saves[chunk.start..chunk.start + sent].iter().enumerate() {
            if let Some(receive) = save {
                if self.pending_tx.len() == PENDING_TX {
                    self.pending_tx.pop_front();
                }
                let interface = self.interfaces[chunk.start + k];
                let nic = self.shared.nic_clock(interface).map_or(0, |c| c.if_index);
                self.pending_tx.push_back((self.next_tx_id.wrapping_add(k as u32), *receive, nic));
            }
        }
        if self.shared.kernel_tx_timestamps && sent > 0 {
            if self.sent_batches.len() == SENT_BATCHES {
                self.sent_batches.pop_front();
            }
            self.sent_batches.push_back((self.next_tx_id, sent as u32, read_ns));
        }
        self.next_tx_id = self.next_tx_id.wrapping_add(sent as u32);
        let interleaved = self.saves[chunk.start..chunk.start + sent].iter().filter(|(_, i)| *i).count();
        counters.interleaved.fetch_add(interleaved as u64, Ordering::Relaxed);
        sent
    }

    /// Read the kernel's transmit timestamps queued on the socket (every datagram
    /// sent has one; those of answers to interleaved requests go into the map).
    fn read_tx_timestamps(&mut self, clock_offset_s: f64) {
        if !self.shared.kernel_tx_timestamps {
            return;
        }
        let fd = self.socket.as_raw_fd();
        let counters = &self.shared.counters[self.index];
        loop {
            let mut nothing = [0u8; 1];
            let mut iov = [IoSliceMut::new(&mut nothing)];
            let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
            let Ok(msg) = recvmsg::<()>(fd, &mut iov, Some(&mut self.errqueue_cmsgs), flags) else {
                return; // EAGAIN: the queue is empty.
            };
            let (mut software, mut raw, mut id) = (None, None, None);
            for cmsg in msg.cmsgs().into_iter().flatten() {
                match cmsg {
                    ControlMessageOwned::ScmTimestampsns(ts) => {
                        software = nonzero_ns(&ts.system);
                        raw = nonzero_ns(&ts.hw_raw);
                    }
                    ControlMessageOwned::Ipv4RecvErr(e, _) | ControlMessageOwned::Ipv6RecvErr(e, _)
                        if e.ee_origin == nix::libc::SO_EE_ORIGIN_TIMESTAMPING =>
                    {
                        id = Some(e.ee_data)
                    }
                    _ => {}
                }
            }
            let Some(id) = id else { continue };
            // The NIC's timestamp comes in a message of its own, after the kernel's.
            if let Some(phc_ns) = raw {
                counters.tx_hardware.fetch_add(1, Ordering::Relaxed);
                let Some(at) = self.pending_tx.iter().position(|&(pending, _, nic)| pending == id && nic != 0) else {
                    continue;
                };
                let (_, receive, nic) = self.pending_tx[at];
                self.pending_tx.remove(at);
                let now_ns = system_now_ns();
                let clock = self.shared.nic_clocks.iter().find(|c| c.if_index == nic);
                if let Some(sent_ns) = clock.and_then(|c| c.transmit_time(phc_ns, now_ns)) {
                    let sent = interleave::mark_transmit(shifted(sent_ns, clock_offset_s));
                    self.shared.tx_timestamps(receive).update(receive, sent, TimestampSource::Hardware);
                }
                continue;
            }
            let Some(sent_ns) = software else { continue };
            counters.tx_kernel.fetch_add(1, Ordering::Relaxed);
            while let Some(&(first, count, read_ns)) = self.sent_batches.front() {
                let position = id.wrapping_sub(first);
                if position as i32 >= 0 && position < count {
                    self.send_delay.learn(position as usize, sent_ns - read_ns);
                    break;
                }
                if (position as i32) < 0 {
                    break; // a datagram older than every batch kept
                }
                self.sent_batches.pop_front();
            }
            // Ids come back in sending order; an answer whose timestamp never came
            // is given up, unless its NIC's is still to come.
            let mut at = 0;
            while let Some(&(pending, receive, nic)) = self.pending_tx.get(at) {
                if pending.wrapping_sub(id) as i32 > 0 {
                    break;
                }
                if pending == id {
                    let sent = interleave::mark_transmit(shifted(sent_ns, clock_offset_s));
                    self.shared.tx_timestamps(receive).update(receive, sent, TimestampSource::Kernel);
                }
                if nic != 0 {
                    at += 1; // awaits the NIC's timestamp (or is pushed out by newer answers)
                } else {
                    self.pending_tx.remove(at);
                }
                if pending == id {
                    break;
                }
            }
        }
    }
}

fn ip_of(address: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
}
