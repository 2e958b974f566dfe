//! The refclock reader's two parsers of other processes' bytes: SOCK datagrams
//! (chrony's `struct sock_sample`) and SHM segments (ntpd's `struct shmTime`, as
//! gpsd writes it, read twice in mode 1). Never a panic; an accepted sample is one
//! the engine can use: finite, leap 0–2, plausible timestamps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_refclock::shm::{self, SHM_LEN};
use strata_refclock::sock;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = sock::parse(data) {
        assert!(s.offset_s.is_finite());
        assert!(s.leap <= 2);
    }
    // Two snapshots of the segment: the first SHM_LEN bytes, then the next (or the
    // first again), as a writer racing the reader would leave them.
    let mut first = [0u8; SHM_LEN];
    let n = data.len().min(SHM_LEN);
    first[..n].copy_from_slice(&data[..n]);
    let mut second = first;
    if data.len() > SHM_LEN {
        let m = (data.len() - SHM_LEN).min(SHM_LEN);
        second[..m].copy_from_slice(&data[SHM_LEN..SHM_LEN + m]);
    }
    let mut calls = 0;
    let read = shm::read(|| {
        calls += 1;
        assert!(calls <= 2, "the segment was read more than twice");
        if calls == 1 { first } else { second }
    });
    if let Ok(s) = read {
        assert!(s.reference_time_ns > 0 && s.receive_time_ns > 0);
        assert!(s.leap <= 2);
        assert!(s.offset_s().is_finite());
    }
});
