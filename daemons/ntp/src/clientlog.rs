//! The client log and per-client response rate limiting, sans I/O: chrony's
//! `clientloglimit` and `ratelimit` directives (chrony.conf(5), "NTP server"), with the
//! algorithm of chrony 4.3's `clientlog.c`. The caller passes the time and the random
//! bits; nothing here reads a clock or a random source, so every test is exact.
//!
//! The engine calls [`ClientLog::on_request`] for every request it would answer (after
//! the access check and the packet checks, as chrony's `NCR_ProcessRxUnknown` does) and
//! sends, drops or kisses as the [`Verdict`] says.
//!
//! Rate limiting is a token bucket per client address (all the hosts behind one NAT
//! share it): a client starts with `burst` answers' worth of tokens, one answer's worth
//! comes back every 2^`interval` s, and a request with no token left is dropped, except
//! that one in 2^`leak` is answered at random anyway, so that an attacker spoofing a
//! client's address cannot cut that client off entirely. As in chrony, a client that
//! polls much faster once it stops getting answers (a broken client, or many behind a
//! NAT) is mostly answered, since limiting it only makes more traffic.
//!
//! Memory: one table of records, allocated in [`ClientLog::new`] to fit the limit and
//! never grown, re-allocated or freed until the log is dropped. Every record is
//! [`RECORD_BYTES`] (36) bytes. The table is cut into slots of [`SLOT_RECORDS`] (16)
//! records, as in chrony; an address hashes to one slot, and is looked for only
//! there. A new address takes the slot's first free record, or, once the slot is full,
//! replaces the record seen least recently (fewest requests among equals), as chrony
//! does when its table cannot grow further. So a flood of spoofed addresses can push
//! out quiet clients, but never uses more memory or more than 16 comparisons a request.
//!
//! Departures from chrony:
//! - the whole table is allocated at start, where chrony starts small and doubles up to
//!   the limit: a worker never allocates on the packet path, and the memory use is the
//!   same from the first packet;
//! - the number of records is as many slots as fit the limit, not a power of two
//!   ("always a power of 2" in chrony.conf(5)): a slot is found by multiplying the hash
//!   rather than masking it, so the whole limit is used;
//! - the address hash is seeded per process, so which addresses share a slot (and can
//!   evict each other) cannot be planned from outside;
//! - `kod_log2` (strata's, chrony 4.3 has no such option): when set, one limited
//!   request in 2^`kod_log2` gets a RATE kiss-o'-death (RFC 5905 §7.4) instead of
//!   silence, so a well-behaved client learns to back off;
//! - the per-client counters saturate instead of wrapping;
//! - only NTP is logged: chrony's command and NTS-KE counters have no use here.

use std::fmt;
use std::mem::size_of;
use std::net::{IpAddr, Ipv6Addr};

/// chrony's `clientloglimit` default: 512 KiB (the configuration has its own copy).
#[cfg(test)]
pub const DEFAULT_MEMORY_LIMIT_BYTES: usize = 524_288;

/// Records per slot, the most that one request compares (chrony `SLOT_SIZE`).
pub const SLOT_RECORDS: usize = 16;

/// Bytes per client record; see [`Record`].
pub const RECORD_BYTES: usize = size_of::<Record>();

const _: () = assert!(RECORD_BYTES == 36, "the documented record size");

/// chrony's hard limit on the table, 2^24 records: "The maximum effective value is
/// 2147483648 (2 GB), which corresponds to 16777216 addresses" (chrony.conf(5)).
const MAX_SLOTS: usize = (1 << 24) / SLOT_RECORDS;

/// Times are kept as 32-bit counts of 1/16 s (chrony `TS_FRAC` 4): 2^28 s, 8.5 years,
/// before they wrap, and they are only ever compared by difference.
const TICK_FRAC_BITS: u32 = 4;
const NS_PER_TICK: u64 = 1_000_000_000 >> TICK_FRAC_BITS;

/// Request rates are kept as −4 × log2(interval in seconds), in an `i8` (chrony
/// `RATE_SCALE`, `MIN_RATE`, `INVALID_RATE`).
const RATE_SCALE: i32 = 4;
const MIN_RATE: i32 = -14 * RATE_SCALE;
const NO_RATE: i8 = -128;

/// chrony's `ratelimit` options for NTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Minimum interval between answers, log2 seconds: −19 to 12, default 3 (8 s).
    /// Below −4, limiting is coarse: answers are allowed in bursts even if closer than
    /// the interval (chrony.conf(5)).
    pub interval_log2: i8,
    /// Answers that may be sent in a burst above the rate: 1 to 255, default 8.
    pub burst: u8,
    /// When the bucket is empty, one request in 2^`leak_log2` is answered anyway: 1 to
    /// 4, default 2 (every fourth request on average).
    pub leak_log2: u8,
    /// strata's, not chrony's: when set, one limited request in 2^`kod_log2` (0 to 16)
    /// gets a RATE kiss-o'-death instead of no answer. Default unset, chrony's
    /// behaviour: a limited request is dropped silently.
    pub kod_log2: Option<u8>,
}

impl RateLimit {
    pub const MIN_INTERVAL_LOG2: i8 = -19;
    pub const MAX_INTERVAL_LOG2: i8 = 12;
    pub const MIN_BURST: u8 = 1;
    pub const MIN_LEAK_LOG2: u8 = 1;
    pub const MAX_LEAK_LOG2: u8 = 4;
    pub const MAX_KOD_LOG2: u8 = 16;
}

impl Default for RateLimit {
    /// chrony's defaults: `ratelimit interval 3 burst 8 leak 2`.
    fn default() -> RateLimit {
        RateLimit { interval_log2: 3, burst: 8, leak_log2: 2, kod_log2: None }
    }
}

/// What to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    /// Over the client's rate: send nothing.
    Drop,
    /// Over the client's rate: send a kiss-o'-death with code RATE.
    Kod,
}

/// The token bucket derived from a [`RateLimit`] (chrony `set_bucket_params`). Tokens
/// are counted in 16-bit records, so for long intervals the clock is read coarser
/// (`token_shift` > 0) and for very short ones a tick buys several answers
/// (`token_shift` < 0, chrony's coarse limiting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bucket {
    tokens_per_answer: u16,
    max_tokens: u16,
    token_shift: i32,
    leak_log2: u32,
    kod_log2: Option<u32>,
}

impl Bucket {
    fn new(limit: &RateLimit) -> Bucket {
        // Out-of-range values are clamped, as chrony does; the config layer is the place
        // to refuse them.
        let interval = i32::from(limit.interval_log2.clamp(RateLimit::MIN_INTERVAL_LOG2, RateLimit::MAX_INTERVAL_LOG2));
        let mut burst = u32::from(limit.burst.max(RateLimit::MIN_BURST));
        let frac = TICK_FRAC_BITS as i32;
        let token_shift = if interval >= -frac {
            // The smallest shift with which a full bucket fits in 16 bits.
            let mut shift = 0;
            while shift < interval + frac && burst << (frac + interval - shift) >= 1 << 16 {
                shift += 1;
            }
            shift
        } else {
            // Coarse: a tick is worth 2^-shift answers; the bucket holds at least one
            // tick's worth.
            let shift = interval + frac;
            burst = burst.max(1 << -shift);
            shift
        };
        let tokens_per_answer = 1u32 << (frac + interval - token_shift).max(0);
        Bucket {
            tokens_per_answer: tokens_per_answer as u16,
            max_tokens: (tokens_per_answer * burst) as u16,
            token_shift,
            leak_log2: u32::from(limit.leak_log2.clamp(RateLimit::MIN_LEAK_LOG2, RateLimit::MAX_LEAK_LOG2)),
            kod_log2: limit.kod_log2.map(|k| u32::from(k.min(RateLimit::MAX_KOD_LOG2))),
        }
    }

    /// Tokens earned between two requests `interval` ticks apart (not negative).
    fn earned(&self, previous: u32, now: u32) -> u32 {
        let interval = now.wrapping_sub(previous);
        if self.token_shift >= 0 {
            (now >> self.token_shift).wrapping_sub(previous >> self.token_shift)
        } else if interval > u32::from(self.max_tokens) {
            u32::from(self.max_tokens)
        } else {
            interval << -self.token_shift
        }
    }
}

/// One client. `repr(C)` so that the size is the documented one: 16 + 4 + 4 + 4 + 2 +
/// 1 + 1 + 1, padded to 36.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
struct Record {
    /// The address as IPv6 octets, IPv4 as IPv4-mapped, in 32-bit words (keeps the
    /// record 4-aligned, so 36 bytes, not 48 as a `u128` would make it).
    address: [u32; 4],
    /// When the last request came, in ticks of 1/16 s.
    last_tick: u32,
    /// NTP requests received (chronyc clients "NTP").
    requests: u32,
    /// Requests not answered (chronyc clients "Drop").
    drops: u32,
    tokens: u16,
    /// Request rate while answered, and while not (chronyc clients "Int" and "IntL").
    rate: i8,
    limited_rate: i8,
    flags: u8,
}

/// The record holds a client.
const OCCUPIED: u8 = 1;
/// The client's last request was not answered (chrony `FLAG_NTP_DROPPED`).
const DROPPED: u8 = 2;

impl Record {
    const FREE: Record = Record {
        address: [0; 4],
        last_tick: 0,
        requests: 0,
        drops: 0,
        tokens: 0,
        rate: NO_RATE,
        limited_rate: NO_RATE,
        flags: 0,
    };

    /// Count a request and update the bucket and the rate estimates (chrony
    /// `update_record`).
    fn update(&mut self, now: u32, bucket: Option<&Bucket>) {
        let first = self.requests == 0;
        let previous = self.last_tick;
        self.last_tick = now;
        self.requests = self.requests.saturating_add(1);
        let interval = now.wrapping_sub(previous);
        // The clock went back: learn nothing from it (chrony does the same).
        if first || (interval as i32) < 0 {
            return;
        }
        if let Some(bucket) = bucket {
            let tokens = u32::from(self.tokens).saturating_add(bucket.earned(previous, now));
            self.tokens = tokens.min(u32::from(bucket.max_tokens)) as u16;
        }

        // The interval as a scaled log2, rounded: -4 × log2(interval) ...
        let scaled_log2 = if interval == 0 {
            // ... less than a tick: call it half a tick.
            -RATE_SCALE * (TICK_FRAC_BITS as i32 + 1)
        } else {
            // `interval` < 2^31, so this cannot overflow.
            let mut rest = interval + (interval >> 1);
            let mut scaled = -RATE_SCALE * TICK_FRAC_BITS as i32;
            while scaled < -MIN_RATE && rest > 1 {
                rest >>= 1;
                scaled += RATE_SCALE;
            }
            scaled
        };
        // Which estimate this interval feeds depends on whether the previous request was
        // answered: that is how a client that speeds up when limited is recognised.
        let rate = if self.flags & DROPPED != 0 { &mut self.limited_rate } else { &mut self.rate };
        // A rough exponential moving average: slow to rise, quick to fall.
        let target = -scaled_log2;
        let current = i32::from(*rate);
        *rate = if *rate == NO_RATE {
            target
        } else if current < target {
            current + 1
        } else if current > target {
            if current > RATE_SCALE * 5 / 2 + target { RATE_SCALE * 5 / 2 + target } else { (current + target - 1) / 2 }
        } else {
            current
        } as i8;
    }

    /// Decide whether to answer (chrony `CLG_LimitServiceRate`), from the low bits of
    /// `random`: the leak takes `leak_log2` bits, the kiss-o'-death the next `kod_log2`.
    fn limit(&mut self, bucket: &Bucket, random: u32) -> Verdict {
        self.flags &= !DROPPED;
        if self.tokens >= bucket.tokens_per_answer {
            self.tokens -= bucket.tokens_per_answer;
            return Verdict::Answer;
        }
        let mut drop = random & ((1 << bucket.leak_log2) - 1) != 0;
        // chrony: "Poorly implemented clients may send new requests at even a higher
        // rate when they are not getting replies. If the request rate seems to be more
        // than twice as much as when replies are sent, give up on rate limiting to
        // reduce the amount of traffic. Invert the sense of the leak to respond to most
        // of the requests, but still keep the estimated rate updated."
        if self.limited_rate != NO_RATE && i32::from(self.limited_rate) > i32::from(self.rate) + RATE_SCALE {
            drop = !drop;
        }
        if !drop {
            self.tokens = 0;
            return Verdict::Answer;
        }
        self.flags |= DROPPED;
        self.drops = self.drops.saturating_add(1);
        match bucket.kod_log2 {
            Some(kod_log2) if (random >> bucket.leak_log2) & ((1 << kod_log2) - 1) == 0 => Verdict::Kod,
            _ => Verdict::Drop,
        }
    }
}

/// A client as the control plane shows it (chronyc clients).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientRecord {
    /// IPv4 for an IPv4 or IPv4-mapped client.
    pub address: IpAddr,
    /// NTP requests received ("NTP").
    pub ntp_requests: u32,
    /// Requests not answered because of the rate limit, dropped or kissed ("Drop").
    pub dropped: u32,
    /// Average interval between requests while answered, log2 seconds ("Int"); `None`
    /// until two requests have been seen.
    pub interval_log2: Option<i8>,
    /// Average interval between requests after one was not answered ("IntL").
    pub limited_interval_log2: Option<i8>,
    last_tick: u32,
}

impl ClientRecord {
    /// Whole seconds since the last request, at `now_ns` on the clock given to
    /// [`ClientLog::on_request`] ("Last"); `None` if that request seems to come after
    /// `now_ns` (chronyc prints "-").
    pub fn seconds_since_last(&self, now_ns: u64) -> Option<u32> {
        let ago = ticks(now_ns).wrapping_sub(self.last_tick);
        if (ago as i32) < 0 { None } else { Some(ago >> TICK_FRAC_BITS) }
    }
}

/// chrony `get_interval`: the scaled rate back to a rounded log2 interval.
fn interval_log2(rate: i8) -> Option<i8> {
    if rate == NO_RATE {
        return None;
    }
    let rate = i32::from(rate);
    let rounded = rate + if rate > 0 { RATE_SCALE / 2 } else { -RATE_SCALE / 2 };
    Some((rounded / -RATE_SCALE) as i8)
}

fn ticks(now_ns: u64) -> u32 {
    // Truncated to 32 bits on purpose: ticks are compared by wrapping difference.
    (now_ns / NS_PER_TICK) as u32
}

/// The address as a record holds it.
fn key(client: IpAddr) -> [u32; 4] {
    let v6 = match client {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let o = v6.octets();
    [0, 4, 8, 12].map(|i| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]))
}

fn address(key: [u32; 4]) -> IpAddr {
    let v6 = Ipv6Addr::from(key.iter().fold(0u128, |bits, &word| bits << 32 | u128::from(word)));
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// 64 × 64 → 128-bit multiply, folded back to 64 bits by xor: the core of the
/// foldhash / ahash families, a good mix for two multiplies' cost.
fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

/// splitmix64's finaliser, to spread one seed into independent-looking words.
fn splitmix(x: u64) -> u64 {
    let x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The log of clients and their rate-limit state: one shard of the engine's, behind
/// a `Mutex`. `on_request` costs a hash, at most 16 record comparisons, and no
/// allocation.
pub struct ClientLog {
    /// Fixed from `new` on: a boxed slice cannot grow.
    records: Box<[Record]>,
    slots: u64,
    len: usize,
    bucket: Option<Bucket>,
    seed: [u64; 3],
}

impl ClientLog {
    /// A log of as many whole slots as fit `memory_limit_bytes` (this struct included,
    /// and at least one slot, 576 bytes, whatever the limit), rate limiting with
    /// `limit` if any. `seed` should be random per process: it decides which addresses
    /// share a slot.
    pub fn new(memory_limit_bytes: usize, limit: Option<RateLimit>, seed: u64) -> ClientLog {
        let table_bytes = memory_limit_bytes.saturating_sub(size_of::<ClientLog>());
        let slots = (table_bytes / (SLOT_RECORDS * RECORD_BYTES)).clamp(1, MAX_SLOTS);
        let s0 = splitmix(seed);
        let s1 = splitmix(s0);
        let s2 = splitmix(s1);
        ClientLog {
            records: vec![Record::FREE; slots * SLOT_RECORDS].into_boxed_slice(),
            slots: slots as u64,
            len: 0,
            bucket: limit.as_ref().map(Bucket::new),
            // An odd multiplier never zeroes the product.
            seed: [s0 | 1, s1, s2],
        }
    }

    /// Log a request from `client` received at `now_ns` (nanoseconds on any clock that
    /// does not jump: CLOCK_MONOTONIC is best), and say whether to answer it. `random`
    /// must be fresh random bits for every call: the leak and the kiss-o'-death use
    /// them.
    pub fn on_request(&mut self, client: IpAddr, now_ns: u64, random: u32) -> Verdict {
        let now = ticks(now_ns);
        let index = self.find_or_insert(key(client), now);
        let bucket = self.bucket.as_ref();
        let record = &mut self.records[index];
        record.update(now, bucket);
        match bucket {
            Some(bucket) => record.limit(bucket, random),
            None => Verdict::Answer,
        }
    }

    /// Every client logged, in table order.
    pub fn clients(&self) -> impl Iterator<Item = ClientRecord> + '_ {
        self.records.iter().filter(|r| r.flags & OCCUPIED != 0).map(|r| ClientRecord {
            address: address(r.address),
            ntp_requests: r.requests,
            dropped: r.drops,
            interval_log2: interval_log2(r.rate),
            limited_interval_log2: interval_log2(r.limited_rate),
            last_tick: r.last_tick,
        })
    }

    /// How many clients the log can hold.
    pub fn capacity(&self) -> usize {
        self.records.len()
    }

    /// How many clients it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes held: this struct and its table. Fixed at construction.
    pub fn memory_bytes(&self) -> usize {
        size_of::<ClientLog>() + self.records.len() * RECORD_BYTES
    }

    /// The slot of an address: a seeded hash, scaled onto the slot count.
    fn slot(&self, key: [u32; 4]) -> usize {
        let high = u64::from(key[0]) << 32 | u64::from(key[1]);
        let low = u64::from(key[2]) << 32 | u64::from(key[3]);
        let hash = folded_multiply(folded_multiply(high ^ self.seed[1], low ^ self.seed[2]), self.seed[0]);
        // Lemire's multiply-shift reduction: uniform on any slot count, no division.
        ((u128::from(hash) * u128::from(self.slots)) >> 64) as usize
    }

    /// The record of `key`, a fresh one if it is new (chrony `get_record`).
    fn find_or_insert(&mut self, key: [u32; 4], now: u32) -> usize {
        let first = self.slot(key) * SLOT_RECORDS;
        let mut oldest = first;
        for index in first..first + SLOT_RECORDS {
            let record = &self.records[index];
            if record.flags & OCCUPIED == 0 {
                // Records are taken in order and never freed, so the address is in no
                // record after this one.
                self.len += 1;
                return self.claim(index, key);
            }
            if record.address == key {
                return index;
            }
            let candidate = &self.records[oldest];
            // Less recently seen, by wrapping difference from now; among equals, fewer
            // requests.
            let age = now.wrapping_sub(record.last_tick);
            let oldest_age = now.wrapping_sub(candidate.last_tick);
            if age > oldest_age || (age == oldest_age && record.requests < candidate.requests) {
                oldest = index;
            }
        }
        self.claim(oldest, key)
    }

    fn claim(&mut self, index: usize, key: [u32; 4]) -> usize {
        self.records[index] =
            Record { address: key, tokens: self.bucket.map_or(0, |b| b.max_tokens), flags: OCCUPIED, ..Record::FREE };
        index
    }
}

impl fmt::Debug for ClientLog {
    /// The sizes, not the thousands of records.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLog")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .field("memory_bytes", &self.memory_bytes())
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::Ipv4Addr;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    /// A start time far from zero, so that no test leans on the clock starting at 0.
    const T0: u64 = 1_700_000_000 * S;

    /// Deterministic random bits for the tests (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
        }
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn limited(limit: RateLimit) -> ClientLog {
        ClientLog::new(DEFAULT_MEMORY_LIMIT_BYTES, Some(limit), 42)
    }

    fn record(log: &ClientLog, client: IpAddr) -> ClientRecord {
        log.clients().find(|c| c.address == client).expect("client logged")
    }

    #[derive(Default, Debug, PartialEq, Eq)]
    struct Count {
        answered: u32,
        dropped: u32,
        kod: u32,
    }

    impl Count {
        fn add(&mut self, verdict: Verdict) {
            match verdict {
                Verdict::Answer => self.answered += 1,
                Verdict::Drop => self.dropped += 1,
                Verdict::Kod => self.kod += 1,
            }
        }
    }

    /// `n` requests from `client`, `spacing_ns` apart, from `start_ns`.
    fn send(log: &mut ClientLog, client: IpAddr, start_ns: u64, spacing_ns: u64, n: u64, rng: &mut Rng) -> Count {
        let mut count = Count::default();
        for i in 0..n {
            count.add(log.on_request(client, start_ns + i * spacing_ns, rng.next()));
        }
        count
    }

    #[test]
    fn defaults_are_chronys() {
        assert_eq!(RateLimit::default(), RateLimit { interval_log2: 3, burst: 8, leak_log2: 2, kod_log2: None });
        // 8 s = 128 ticks an answer, 8 answers in the bucket.
        assert_eq!(
            Bucket::new(&RateLimit::default()),
            Bucket { tokens_per_answer: 128, max_tokens: 1024, token_shift: 0, leak_log2: 2, kod_log2: None }
        );
    }

    #[test]
    fn bucket_parameters_follow_chrony() {
        let bucket = |interval_log2, burst| Bucket::new(&RateLimit { interval_log2, burst, ..RateLimit::default() });
        // The longest interval and burst: the clock is read in 2^8-tick steps so that
        // 255 × 2^16 ticks fit 16 bits.
        let b = bucket(12, 255);
        assert_eq!((b.tokens_per_answer, b.max_tokens, b.token_shift), (256, 65280, 8));
        // One tick per answer.
        let b = bucket(-4, 1);
        assert_eq!((b.tokens_per_answer, b.max_tokens, b.token_shift), (1, 1, 0));
        // Coarse: 2^15 answers per tick, 524288 per second.
        let b = bucket(-19, 8);
        assert_eq!((b.tokens_per_answer, b.max_tokens, b.token_shift), (1, 32768, -15));
        let b = bucket(-6, 8);
        assert_eq!((b.tokens_per_answer, b.max_tokens, b.token_shift), (1, 8, -2));
        // Out of range: clamped, as chrony does.
        assert_eq!(bucket(100, 0), bucket(12, 1));
        assert_eq!(bucket(-100, 1), bucket(-19, 1));
        let b = Bucket::new(&RateLimit { leak_log2: 9, kod_log2: Some(99), ..RateLimit::default() });
        assert_eq!((b.leak_log2, b.kod_log2), (4, Some(16)));
        assert_eq!(Bucket::new(&RateLimit { leak_log2: 0, ..RateLimit::default() }).leak_log2, 1);
    }

    /// interval 3 burst 8 leak 2, 1000 requests 1 ms apart: the burst, then one in four
    /// at random (the second's worth of tokens, 16 ticks, never buys a whole answer).
    #[test]
    fn a_flooding_client_gets_its_burst_and_the_leak() {
        let mut log = limited(RateLimit { interval_log2: 3, burst: 8, leak_log2: 2, kod_log2: None });
        let client = v4(192, 0, 2, 1);
        let mut rng = Rng(1);
        let mut verdicts = vec![];
        for i in 0..1000 {
            verdicts.push(log.on_request(client, T0 + i * MS, rng.next()));
        }
        assert!(verdicts[..8].iter().all(|&v| v == Verdict::Answer), "the burst is answered");
        let answered = verdicts.iter().filter(|&&v| v == Verdict::Answer).count() as u32;
        let expected = 8 + 992 / 4;
        assert!(answered.abs_diff(expected) < 40, "answered {answered}, expected about {expected}");
        assert!(!verdicts.contains(&Verdict::Kod));
        let r = record(&log, client);
        assert_eq!((r.ntp_requests, r.dropped), (1000, 1000 - answered));
        // 1 ms is less than a tick: both rates read 2^-5 s, so no "speeds up when
        // limited" relief.
        assert_eq!((r.interval_log2, r.limited_interval_log2), (Some(-5), Some(-5)));
        assert_eq!(r.seconds_since_last(T0 + 999 * MS), Some(0));
        assert_eq!(r.seconds_since_last(T0 + 11 * S), Some(10));
        assert_eq!(r.seconds_since_last(T0), None, "last request after now");
    }

    #[test]
    fn leak_follows_the_random_bits() {
        let mut log = limited(RateLimit { interval_log2: 3, burst: 1, leak_log2: 2, kod_log2: None });
        let client = v4(192, 0, 2, 1);
        assert_eq!(log.on_request(client, T0, 0b01), Verdict::Answer, "from the bucket");
        assert_eq!(log.on_request(client, T0 + MS, 0b01), Verdict::Drop);
        assert_eq!(log.on_request(client, T0 + 2 * MS, 0b10), Verdict::Drop);
        assert_eq!(log.on_request(client, T0 + 3 * MS, 0b100), Verdict::Answer, "low two bits zero: leaked");
        assert_eq!(log.on_request(client, T0 + 4 * MS, 0b11), Verdict::Drop);
    }

    #[test]
    fn a_client_at_the_allowed_rate_is_never_limited() {
        for (interval_log2, burst) in [(3, 8), (3, 1), (0, 1), (-4, 1), (6, 3), (12, 255)] {
            let mut log = limited(RateLimit { interval_log2, burst, ..RateLimit::default() });
            let mut rng = Rng(7);
            let client = v4(198, 51, 100, 7);
            let interval_ns = (S as f64 * 2f64.powi(i32::from(interval_log2))) as u64;
            let count = send(&mut log, client, T0, interval_ns, 500, &mut rng);
            assert_eq!(count, Count { answered: 500, ..Count::default() }, "interval {interval_log2} burst {burst}");
        }
        // chronyd's iburst (4 requests 2 s apart) and then polling every 64 s.
        let mut log = limited(RateLimit::default());
        let mut rng = Rng(8);
        let client = v4(198, 51, 100, 8);
        let mut count = send(&mut log, client, T0, 2 * S, 4, &mut rng);
        let more = send(&mut log, client, T0 + 8 * S, 64 * S, 100, &mut rng);
        count.answered += more.answered;
        assert_eq!(count, Count { answered: 104, ..Count::default() });
        assert_eq!(record(&log, client).interval_log2, Some(6));
    }

    #[test]
    fn a_client_twice_too_fast_gets_about_the_allowed_rate() {
        let mut log = limited(RateLimit { interval_log2: 3, burst: 8, leak_log2: 4, kod_log2: None });
        let mut rng = Rng(9);
        let count = send(&mut log, v4(203, 0, 113, 9), T0, 4 * S, 2000, &mut rng);
        // 8000 s at one answer per 8 s, plus the burst, plus a leak of 1/16 of the rest.
        let allowed = 8000 / 8 + 8;
        assert!(count.answered >= allowed && count.answered < allowed + 1000 / 16 + 30, "{count:?}");
    }

    #[test]
    fn other_clients_are_unaffected() {
        let mut log = limited(RateLimit::default());
        let mut rng = Rng(3);
        let flooder = v4(192, 0, 2, 66);
        let mut flood = Count::default();
        let mut polite = Count::default();
        for i in 0..100_000u64 {
            let now = T0 + i * MS;
            flood.add(log.on_request(flooder, now, rng.next()));
            if i % 8000 == 0 {
                for host in 1..=50 {
                    polite.add(log.on_request(v4(198, 51, 100, host), now, rng.next()));
                }
            }
        }
        assert_eq!(polite, Count { answered: 13 * 50, ..Count::default() });
        assert!(flood.answered < 100_000 / 4 + 500, "{flood:?}");
        assert_eq!(log.len(), 51);
    }

    /// chrony's relief for clients that poll faster once they get no answer: most of
    /// their requests are answered, so that they calm down.
    #[test]
    fn a_client_that_speeds_up_when_limited_is_mostly_answered() {
        let mut log = limited(RateLimit { interval_log2: 3, burst: 1, leak_log2: 2, kod_log2: None });
        let mut rng = Rng(5);
        let client = v4(192, 0, 2, 5);
        let mut now = T0;
        let mut late = Count::default();
        for i in 0..2000 {
            let verdict = log.on_request(client, now, rng.next());
            if i >= 1000 {
                late.add(verdict);
            }
            // Every second when answered, every 1/16 s when not.
            now += if verdict == Verdict::Answer { S } else { 62_500_000 };
        }
        let r = record(&log, client);
        assert!(r.limited_interval_log2 < r.interval_log2, "{r:?}");
        assert!(late.answered > 600, "{late:?}");
        // The same client polling every second regardless stays limited.
        let mut log = limited(RateLimit { interval_log2: 3, burst: 1, leak_log2: 2, kod_log2: None });
        let steady = send(&mut log, client, T0, S, 2000, &mut rng);
        assert!(steady.answered < 2000 / 8 + 2000 / 4 + 50, "{steady:?}");
    }

    #[test]
    fn kod_is_deterministic_given_the_random_bits() {
        let limit = RateLimit { interval_log2: 3, burst: 1, leak_log2: 2, kod_log2: Some(1) };
        let client = v4(192, 0, 2, 9);
        let mut log = limited(limit);
        assert_eq!(log.on_request(client, T0, 0), Verdict::Answer);
        // Leak bits 0b01 (no leak); the kod bit, bit 2, decides.
        assert_eq!(log.on_request(client, T0 + MS, 0b001), Verdict::Kod);
        assert_eq!(log.on_request(client, T0 + 2 * MS, 0b101), Verdict::Drop);
        assert_eq!(log.on_request(client, T0 + 3 * MS, 0b011), Verdict::Kod);
        assert_eq!(log.on_request(client, T0 + 4 * MS, 0b111), Verdict::Drop);
        assert_eq!(record(&log, client).dropped, 4, "a kiss counts as dropped");

        // The same inputs, the same verdicts; about half of the limited ones kissed.
        let run = |seed| {
            let mut log = limited(limit);
            let mut rng = Rng(seed);
            (0..1000).map(|i| log.on_request(client, T0 + i * MS, rng.next())).collect::<Vec<_>>()
        };
        assert_eq!(run(11), run(11));
        assert_ne!(run(11), run(12));
        let verdicts = run(11);
        let kod = verdicts.iter().filter(|&&v| v == Verdict::Kod).count();
        let drop = verdicts.iter().filter(|&&v| v == Verdict::Drop).count();
        assert!(kod.abs_diff(drop) < 100, "kod {kod} drop {drop}");

        // kod_log2 0: every limited request is kissed.
        let mut log = limited(RateLimit { kod_log2: Some(0), ..limit });
        let mut rng = Rng(13);
        let count = send(&mut log, client, T0, MS, 1000, &mut rng);
        assert_eq!(count.dropped, 0);
        assert!(count.kod > 600, "{count:?}");
    }

    #[test]
    fn without_a_limit_every_request_is_answered_and_logged() {
        let mut log = ClientLog::new(DEFAULT_MEMORY_LIMIT_BYTES, None, 1);
        let mut rng = Rng(2);
        let client: IpAddr = "2001:db8::1".parse().unwrap();
        let count = send(&mut log, client, T0, MS, 10_000, &mut rng);
        assert_eq!(count, Count { answered: 10_000, ..Count::default() });
        let r = record(&log, client);
        assert_eq!((r.ntp_requests, r.dropped, r.interval_log2, r.limited_interval_log2), (10_000, 0, Some(-5), None));
    }

    #[test]
    fn mapped_and_plain_ipv4_are_one_client() {
        let mut log = limited(RateLimit::default());
        log.on_request(v4(192, 0, 2, 1), T0, 0);
        log.on_request("::ffff:192.0.2.1".parse().unwrap(), T0 + S, 0);
        log.on_request("::192.0.2.1".parse().unwrap(), T0 + S, 0);
        assert_eq!(log.len(), 2);
        assert_eq!(record(&log, v4(192, 0, 2, 1)).ntp_requests, 2);
        assert_eq!(record(&log, "::192.0.2.1".parse().unwrap()).ntp_requests, 1);
        // "::" is an address like any other, not a free record.
        log.on_request("::".parse().unwrap(), T0, 0);
        log.on_request("::".parse().unwrap(), T0, 0);
        assert_eq!(record(&log, "::".parse().unwrap()).ntp_requests, 2);
    }

    #[test]
    fn interval_estimates_follow_chrony() {
        let mut log = ClientLog::new(DEFAULT_MEMORY_LIMIT_BYTES, None, 1);
        let client = v4(192, 0, 2, 1);
        for (spacing, log2) in [(S, 0), (2 * S, 1), (16 * S, 4), (1024 * S, 10), (S / 4, -2)] {
            let mut log2_seen = None;
            for i in 0..40 {
                log.on_request(client, T0 + 100_000 * S + i * spacing, 0);
                log2_seen = record(&log, client).interval_log2;
            }
            assert_eq!(log2_seen, Some(log2), "every {spacing} ns");
            log = ClientLog::new(DEFAULT_MEMORY_LIMIT_BYTES, None, 1);
        }
        assert_eq!(interval_log2(NO_RATE), None);
        assert_eq!(interval_log2(20), Some(-5));
        assert_eq!(interval_log2(-24), Some(6));
        assert_eq!(interval_log2(0), Some(0));
    }

    #[test]
    fn time_going_back_earns_no_tokens_and_does_not_panic() {
        let mut log = limited(RateLimit { interval_log2: 3, burst: 1, leak_log2: 4, kod_log2: None });
        let client = v4(192, 0, 2, 1);
        for t in [T0 - 16 * S, T0 - 8 * S, T0] {
            assert_eq!(log.on_request(client, t, 1), Verdict::Answer);
        }
        // An hour back: had the step counted, the bucket would be full again.
        let back = T0 - 3600 * S;
        assert_eq!(log.on_request(client, back, 1), Verdict::Drop);
        // From there on, tokens accrue as usual: half an answer's worth in 4 s, then the
        // other half.
        assert_eq!(log.on_request(client, back + 4 * S, 1), Verdict::Drop);
        assert_eq!(log.on_request(client, back + 8 * S, 1), Verdict::Answer);
        // Across a wrap of the 32-bit tick counter.
        let wrap = (1u64 << 32) * NS_PER_TICK;
        let mut log = limited(RateLimit { interval_log2: 3, burst: 1, leak_log2: 4, kod_log2: None });
        assert_eq!(log.on_request(client, wrap - S, 1), Verdict::Answer);
        assert_eq!(log.on_request(client, wrap, 1), Verdict::Drop);
        assert_eq!(log.on_request(client, wrap + 8 * S, 1), Verdict::Answer, "8 s after the first");
        log.on_request(client, u64::MAX, 1);
        log.on_request(client, 0, 1);
    }

    #[test]
    fn capacity_fits_the_limit() {
        for limit in [0, 1, 576, 4096, 65_536, DEFAULT_MEMORY_LIMIT_BYTES, 1 << 20, 10 << 20] {
            let log = ClientLog::new(limit, Some(RateLimit::default()), 0);
            assert_eq!(log.capacity() % SLOT_RECORDS, 0);
            assert_eq!(log.memory_bytes(), size_of::<ClientLog>() + log.capacity() * RECORD_BYTES);
            if limit >= size_of::<ClientLog>() + SLOT_RECORDS * RECORD_BYTES {
                assert!(log.memory_bytes() <= limit, "{limit}: {}", log.memory_bytes());
                assert!(log.memory_bytes() + SLOT_RECORDS * RECORD_BYTES > limit, "{limit}: uses the limit");
            } else {
                assert_eq!(log.capacity(), SLOT_RECORDS, "at least one slot");
            }
        }
        // chrony's default holds at least chrony's 4096 addresses.
        assert!(ClientLog::new(DEFAULT_MEMORY_LIMIT_BYTES, None, 0).capacity() >= 4096);
    }

    #[test]
    fn a_million_addresses_in_one_mebibyte() {
        let limit = 1 << 20;
        let mut log = ClientLog::new(limit, Some(RateLimit::default()), 0x1234_5678);
        let bytes = log.memory_bytes();
        let table = (log.records.as_ptr(), log.records.len());
        assert!(bytes <= limit);
        let mut rng = Rng(4);
        for i in 0..1_000_000u64 {
            let client = if i % 2 == 0 {
                IpAddr::V4(Ipv4Addr::from(rng.next()))
            } else {
                IpAddr::V6(Ipv6Addr::from(u128::from(rng.next()) << 64 | u128::from(i)))
            };
            log.on_request(client, T0 + i * 1000, rng.next());
            assert!(log.len() <= log.capacity());
        }
        assert_eq!(log.memory_bytes(), bytes);
        assert_eq!((log.records.as_ptr(), log.records.len()), table, "the table was never re-allocated");
        assert_eq!(log.len(), log.capacity(), "full");
        assert_eq!(log.clients().count(), log.len());
    }

    #[test]
    fn a_full_slot_evicts_the_least_recently_seen() {
        // Below one slot's worth: exactly one slot, so every address shares it.
        let mut log = ClientLog::new(0, Some(RateLimit::default()), 9);
        assert_eq!(log.capacity(), SLOT_RECORDS);
        for host in 0..16u8 {
            log.on_request(v4(10, 0, 0, host), T0 + u64::from(host) * S, 0);
        }
        // Host 0 seen again: host 1 is now the least recently seen.
        log.on_request(v4(10, 0, 0, 0), T0 + 20 * S, 0);
        log.on_request(v4(10, 0, 0, 100), T0 + 21 * S, 0);
        assert_eq!(log.len(), 16);
        let logged: Vec<IpAddr> = log.clients().map(|c| c.address).collect();
        assert!(!logged.contains(&v4(10, 0, 0, 1)));
        assert!(logged.contains(&v4(10, 0, 0, 0)) && logged.contains(&v4(10, 0, 0, 100)));
        // The newcomer starts afresh with a full bucket.
        let r = record(&log, v4(10, 0, 0, 100));
        assert_eq!((r.ntp_requests, r.dropped), (1, 0));

        // Among equally old, the one with fewer requests goes.
        let mut log = ClientLog::new(0, None, 9);
        for host in 0..16u8 {
            for _ in 0..=(host % 3) {
                log.on_request(v4(10, 0, 0, host), T0, 0);
            }
        }
        log.on_request(v4(10, 0, 0, 200), T0, 0);
        let logged: Vec<IpAddr> = log.clients().map(|c| c.address).collect();
        assert!(!logged.contains(&v4(10, 0, 0, 0)), "host 0 had one request, and came first");
        assert!(logged.contains(&v4(10, 0, 0, 1)));
    }

    #[test]
    fn a_limited_client_stays_limited_while_logged() {
        // A limited client stays limited while it is among the 16 most recent in its slot.
        let mut log = ClientLog::new(0, Some(RateLimit { leak_log2: 4, ..RateLimit::default() }), 9);
        let flooder = v4(192, 0, 2, 1);
        let mut rng = Rng(6);
        send(&mut log, flooder, T0, MS, 100, &mut rng);
        for host in 0..14u8 {
            log.on_request(v4(10, 0, 0, host), T0 + S, 0);
        }
        let count = send(&mut log, flooder, T0 + 2 * S, MS, 100, &mut Rng(6));
        assert!(count.answered < 20, "{count:?}");
    }

    #[test]
    fn hashing_spreads_neighbours_and_depends_on_the_seed() {
        let a = ClientLog::new(1 << 20, None, 1);
        let b = ClientLog::new(1 << 20, None, 2);
        let slots_a: std::collections::HashSet<usize> = (0..=255).map(|d| a.slot(key(v4(10, 0, 0, d)))).collect();
        assert!(slots_a.len() > 200, "{} distinct slots", slots_a.len());
        let same = (0..=255u8).filter(|&d| a.slot(key(v4(10, 0, 0, d))) == b.slot(key(v4(10, 0, 0, d)))).count();
        assert!(same < 10, "{same} addresses in the same slot under both seeds");
        for d in 0..=255 {
            assert!(a.slot(key(v4(10, 0, 0, d))) < a.slots as usize);
        }
    }

    #[test]
    fn a_shard_can_move_between_threads() {
        fn assert_send<T: Send + Sync>() {}
        assert_send::<ClientLog>();
        let log = std::sync::Mutex::new(ClientLog::new(DEFAULT_MEMORY_LIMIT_BYTES, None, 0));
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let log = &log;
                s.spawn(move || {
                    for i in 0..1000 {
                        log.lock().unwrap().on_request(v4(10, t, 0, 1), T0 + i * S, 0);
                    }
                });
            }
        });
        assert_eq!(log.lock().unwrap().len(), 4);
    }
}
