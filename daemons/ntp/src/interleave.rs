//! Interleaved mode, server side (RFC 9769; chrony's `xleave`): the precise transmit
//! time of an answer is only known after it left (the kernel's transmit timestamp),
//! so it is handed to the client in the next answer instead. Sans I/O.
//!
//! As chrony does, the state is not kept per client but per answer: a map from the
//! receive timestamp an answer carried (the client echoes it as the origin of its
//! next interleaved request) to that answer's transmit time. Answers carry receive
//! timestamps with the lowest bit set and transmit timestamps with it cleared, so a
//! request whose origin has the bit set was built from one of our receive
//! timestamps. Entries are saved only for requests that look interleaved (a basic
//! client never costs memory) and taken once (a replayed request gets a basic
//! answer). The map is a fixed table allocated at start, each key in one of two
//! buckets of [`WAYS`] entries, the oldest of the sixteen overwritten (close to
//! chrony's ring of the newest answers, without its sorting): spoofed requests can
//! evict entries but never grow it.

use std::hash::BuildHasher;

use strata_proto::ntp::{Header, NtpTimestamp};

/// Where a transmit timestamp came from (chronyc's D, K and H), worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimestampSource {
    /// A clock read just before the send.
    Daemon,
    /// The kernel's software timestamp, as the packet left (SOF_TIMESTAMPING_TX_SOFTWARE).
    Kernel,
    /// The NIC's, mapped onto the system clock through its PHC (`hwtimestamp`).
    Hardware,
}

/// Entries per bucket. With one bucket of two, 0.15 % of ntpperf's interleaved
/// clients at 1000/s got basic answers from a table 2 % full; with one of eight, 2 %
/// at 42 % full.
pub const WAYS: usize = 8;

/// Bytes one saved answer costs.
pub const ENTRY_BYTES: usize = size_of::<Entry>();

/// A receive timestamp as answers carry it: the lowest bit set.
pub fn mark_receive(ts: NtpTimestamp) -> NtpTimestamp {
    NtpTimestamp::from_bits(ts.to_bits() | 1)
}

/// A transmit timestamp as answers carry it: the lowest bit cleared, so that it can
/// never equal a receive timestamp.
pub fn mark_transmit(ts: NtpTimestamp) -> NtpTimestamp {
    NtpTimestamp::from_bits(ts.to_bits() & !1)
}

/// The receive timestamp of ours an interleaved request refers to, if it is one:
/// NTPv4, origin with the lowest bit set, receive ≠ transmit (chrony's test; a basic
/// client's first request has receive = transmit = 0 or origin zero).
pub fn interleaved_origin(request: &Header) -> Option<NtpTimestamp> {
    (request.version == 4 && request.origin_ts.to_bits() & 1 == 1 && request.receive_ts != request.transmit_ts)
        .then_some(request.origin_ts)
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// A marked receive timestamp (lowest bit set); 0: free.
    receive: u64,
    transmit: NtpTimestamp,
    source: TimestampSource,
    /// When it was saved, in saves: the older of a bucket's two is overwritten.
    saved: u64,
}

const FREE: Entry = Entry { receive: 0, transmit: NtpTimestamp::ZERO, source: TimestampSource::Daemon, saved: 0 };

/// Answers' transmit times by the receive timestamp they carried.
#[derive(Debug)]
pub struct TxTimestamps {
    entries: Box<[Entry]>,
    /// Buckets − 1 (a power of two).
    mask: u64,
    saves: u64,
    /// Random per map, so that which entries share a bucket cannot be planned.
    hasher: std::collections::hash_map::RandomState,
}

impl TxTimestamps {
    /// A map of at most `capacity` answers (rounded down to a power of two, at least
    /// [`WAYS`]); all its memory is allocated here.
    pub fn new(capacity: usize) -> TxTimestamps {
        let buckets = 1 << (capacity / WAYS).max(1).ilog2();
        TxTimestamps {
            entries: vec![FREE; WAYS * buckets].into_boxed_slice(),
            mask: buckets as u64 - 1,
            saves: 0,
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The entries of the key's two buckets (two choices: the table fills to near
    /// its capacity before a bucket overflows).
    fn candidates(&self, receive: NtpTimestamp) -> impl Iterator<Item = usize> + use<> {
        let hash = self.hasher.hash_one(receive.to_bits());
        let (b1, b2) = ((hash & self.mask) as usize, ((hash >> 32) & self.mask) as usize);
        let second = if b2 == b1 { 0..0 } else { WAYS * b2..WAYS * (b2 + 1) };
        (WAYS * b1..WAYS * (b1 + 1)).chain(second)
    }

    fn find(&mut self, receive: NtpTimestamp) -> Option<&mut Entry> {
        let key = receive.to_bits();
        let at = self.candidates(receive).find(|&i| self.entries[i].receive == key && key != 0)?;
        Some(&mut self.entries[at])
    }

    /// Remember that the answer that carried `receive` (marked) was sent at `transmit`.
    pub fn save(&mut self, receive: NtpTimestamp, transmit: NtpTimestamp, source: TimestampSource) {
        self.saves += 1;
        let saved = self.saves;
        let key = receive.to_bits();
        let slot = match self.candidates(receive).find(|&i| self.entries[i].receive == key) {
            Some(same) => same,
            // Free entries were saved at 0: the oldest.
            None => self.candidates(receive).min_by_key(|&i| self.entries[i].saved).unwrap_or(0),
        };
        self.entries[slot] = Entry { receive: key, transmit, source, saved };
    }

    /// A better transmit time for an answer still in the map (the kernel's or the
    /// NIC's, read back after the send); a worse source never replaces a better one.
    pub fn update(&mut self, receive: NtpTimestamp, transmit: NtpTimestamp, source: TimestampSource) -> bool {
        match self.find(receive) {
            Some(entry) if entry.source > source => false,
            Some(entry) => {
                (entry.transmit, entry.source) = (transmit, source);
                true
            }
            None => false,
        }
    }

    /// The transmit time of the answer that carried `receive`, once.
    pub fn take(&mut self, receive: NtpTimestamp) -> Option<(NtpTimestamp, TimestampSource)> {
        let entry = self.find(receive)?;
        let found = (entry.transmit, entry.source);
        *entry = FREE;
        Some(found)
    }

    pub fn len(&self) -> usize {
        self.entries.iter().filter(|e| e.receive != 0).count()
    }

    /// What the map holds, allocated up front: the same after a million saves as
    /// before the first.
    pub fn memory_bytes(&self) -> usize {
        self.entries.len() * ENTRY_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::ntp::{LeapIndicator, Mode, NtpShort, ReferenceId};

    fn ts(bits: u64) -> NtpTimestamp {
        NtpTimestamp::from_bits(bits)
    }

    fn request(origin: u64, receive: u64, transmit: u64) -> Header {
        Header {
            leap: LeapIndicator::NoWarning,
            version: 4,
            mode: Mode::Client,
            stratum: 0,
            poll_log2: 4,
            precision_log2: -20,
            root_delay: NtpShort::ZERO,
            root_dispersion: NtpShort::ZERO,
            reference_id: ReferenceId::ZERO,
            reference_ts: NtpTimestamp::ZERO,
            origin_ts: ts(origin),
            receive_ts: ts(receive),
            transmit_ts: ts(transmit),
        }
    }

    #[test]
    fn only_requests_built_from_our_receive_timestamps_are_interleaved() {
        let rx = mark_receive(ts(0xe9b5_a2c1_2000_0000));
        assert_eq!(interleaved_origin(&request(rx.to_bits(), 7, 9)), Some(rx));
        // A basic client: origin zero, or our transmit timestamp (bit cleared).
        assert_eq!(interleaved_origin(&request(0, 0, 9)), None);
        assert_eq!(interleaved_origin(&request(mark_transmit(ts(0x1235)).to_bits(), 0, 9)), None);
        // receive = transmit: chrony's sign of a basic request.
        assert_eq!(interleaved_origin(&request(rx.to_bits(), 9, 9)), None);
        let mut v3 = request(rx.to_bits(), 7, 9);
        v3.version = 3;
        assert_eq!(interleaved_origin(&v3), None);
        assert_ne!(mark_receive(ts(0x10)), mark_transmit(ts(0x10)));
    }

    #[test]
    fn a_saved_answer_is_given_once_with_its_best_timestamp() {
        let mut map = TxTimestamps::new(8);
        let rx = mark_receive(ts(0x1001));
        map.save(rx, ts(0x2000), TimestampSource::Daemon);
        assert!(map.update(rx, ts(0x2010), TimestampSource::Kernel));
        assert!(!map.update(mark_receive(ts(0x3001)), ts(1), TimestampSource::Kernel), "never saved");
        assert!(map.update(rx, ts(0x2008), TimestampSource::Hardware));
        assert!(!map.update(rx, ts(0x2010), TimestampSource::Kernel), "the NIC's is better");
        assert_eq!(map.take(rx), Some((ts(0x2008), TimestampSource::Hardware)));
        assert_eq!(map.take(rx), None, "a replay gets a basic answer");
    }

    #[test]
    fn a_million_spoofed_answers_keep_the_newest_within_the_memory_allocated_at_start() {
        let mut map = TxTimestamps::new(1100);
        let before = map.memory_bytes();
        assert_eq!(before, 1024 * ENTRY_BYTES);
        for i in 0..1_000_000u64 {
            map.save(mark_receive(ts(i << 1)), ts(i), TimestampSource::Daemon);
            if i % 3 == 0 {
                map.take(mark_receive(ts(i << 1)));
            }
        }
        assert!(map.len() <= 1024);
        assert_eq!(map.memory_bytes(), before);
        assert_eq!(map.take(mark_receive(ts(999_998 << 1))), Some((ts(999_998), TimestampSource::Daemon)));
        assert_eq!(map.take(mark_receive(ts(5 << 1))), None, "the oldest are forgotten");
        // Most of the last few hundred answers are still there.
        let kept = (999_000..999_999u64)
            .filter(|i| i % 3 != 0)
            .filter(|&i| map.take(mark_receive(ts(i << 1))).is_some())
            .count();
        assert!(kept > 600, "{kept} of the last 666 answers kept");
    }
}
