//! The NTP server's answer to one request, sans I/O: no socket, no clock. The caller
//! reads the datagram and the receive time, passes both in with the transmit time to
//! stamp, and sends what comes back, or counts the [`Drop`].
//!
//! Only client requests (mode 3) are answered, with a server reply (mode 4, RFC 5905
//! §9.2 and RFC 4330 §5). Everything else is dropped:
//! - mode 4 never gets an answer, so two servers cannot be played against each other
//!   in a reflection loop;
//! - symmetric (1, 2) and broadcast (5) modes need associations, which this server
//!   does not keep;
//! - control (6) and private (7) are the amplification vectors of old ntpd (`ntpq`
//!   readvar, `ntpdc` monlist): never served on the network socket.

use std::fmt;

use crate::interleave;
use strata_proto::ntp::{HEADER_LEN, Header, LeapIndicator, Mode, NtpShort, NtpTimestamp, Packet, ParseError};
pub use strata_sync::serving::ServerState;

/// Why a request gets no answer. The caller counts these per variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// Not a well-formed NTP packet.
    Malformed(ParseError),
    /// A well-formed packet in a mode other than client.
    NotAClientRequest(Mode),
    /// A client request with a legacy symmetric-key MAC. No keys are configured here,
    /// so an unauthenticated reply would only be discarded by the client; dropping it
    /// saves the bandwidth.
    Authenticated,
}

impl fmt::Display for Drop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drop::Malformed(e) => write!(f, "malformed request: {e}"),
            Drop::NotAClientRequest(mode) => write!(f, "mode {mode} is not a client request"),
            Drop::Authenticated => f.write_str("request carries a symmetric-key MAC"),
        }
    }
}

impl std::error::Error for Drop {}

impl From<ParseError> for Drop {
    fn from(e: ParseError) -> Drop {
        Drop::Malformed(e)
    }
}

/// What [`respond`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Always 48: the reply carries no extension field and no MAC.
    pub len: usize,
    /// The reply is in interleaved mode: its transmit timestamp is the previous
    /// answer's and must not be re-stamped.
    pub interleaved: bool,
    /// The request asked for interleaved mode: the caller saves this receive
    /// timestamp (as the reply carries it) with the reply's transmit time, for the
    /// client's next request.
    pub save_receive: Option<NtpTimestamp>,
}

/// Answer one request into `out`.
///
/// `receive_ts` is when the request arrived (T2), `transmit_ts` the time to stamp as
/// sent (T3); both come from the caller, the best it has (kernel timestamps). The
/// reply echoes the request's version and poll, and copies its transmit timestamp
/// into the origin (RFC 5905 §8), which is what lets the client match the reply and
/// reject a forgery. Extension fields of the request are ignored (RFC 7822 §3 allows
/// it); NTS is not served yet.
///
/// Interleaved mode (RFC 9769, [`crate::interleave`]): the receive timestamp goes
/// out with its lowest bit set, the transmit timestamp with it cleared. A request
/// built from one of our receive timestamps is looked up with `previous_tx`; when
/// that answer's transmit time is known, the reply carries it as its transmit
/// timestamp and the request's receive timestamp as its origin.
pub fn respond(
    request: &[u8],
    receive_ts: NtpTimestamp,
    transmit_ts: NtpTimestamp,
    state: &ServerState,
    previous_tx: impl FnOnce(NtpTimestamp) -> Option<NtpTimestamp>,
    out: &mut [u8; HEADER_LEN],
) -> Result<Answer, Drop> {
    let packet = Packet::parse(request)?;
    let request = packet.header;
    if request.mode != Mode::Client {
        return Err(Drop::NotAClientRequest(request.mode));
    }
    if packet.mac.is_some() {
        return Err(Drop::Authenticated);
    }

    let reference_ts = if state.reference_time.is_zero() && state.leap != LeapIndicator::Unsynchronised {
        // A local reference: "last set" is now. One second back, as chrony does,
        // so that the reference time is never after the transmit time.
        NtpTimestamp::from_bits(receive_ts.to_bits().wrapping_sub(1 << 32))
    } else {
        state.reference_time
    };
    let asked = interleave::interleaved_origin(&request);
    let previous = asked.and_then(previous_tx).filter(|tx| !tx.is_zero());
    let receive_ts_sent = interleave::mark_receive(receive_ts);
    let reply = Header {
        leap: state.leap,
        version: request.version,
        mode: Mode::Server,
        // Stratum 16 ("unsynchronised" in ntpd and chrony) and above are not valid on
        // the wire: RFC 5905 §7.3 sends 0 for them.
        stratum: if state.stratum >= 16 { 0 } else { state.stratum },
        poll_log2: request.poll_log2,
        precision_log2: state.precision_log2,
        root_delay: NtpShort::from_seconds(state.root_delay_s),
        root_dispersion: NtpShort::from_seconds(state.root_dispersion_s),
        reference_id: state.reference_id,
        reference_ts,
        origin_ts: if previous.is_some() { request.receive_ts } else { request.transmit_ts },
        receive_ts: receive_ts_sent,
        transmit_ts: previous.unwrap_or(interleave::mark_transmit(transmit_ts)),
    };
    reply.serialize(out);
    Ok(Answer { len: HEADER_LEN, interleaved: previous.is_some(), save_receive: asked.map(|_| receive_ts_sent) })
}

/// Turn a reply into a RATE kiss-o'-death (RFC 5905 §7.4): leap 3, stratum 0,
/// reference id "RATE"; the origin timestamp stays, so the client can match it.
pub fn make_rate_kiss(reply: &mut [u8; HEADER_LEN]) {
    reply[0] = (reply[0] & 0x3f) | (3 << 6);
    reply[1] = 0;
    reply[12..16].copy_from_slice(b"RATE");
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::ntp::ReferenceId;

    const T1: NtpTimestamp = NtpTimestamp::from_parts(0xe9b5_a2c1, 0x1234_5678);
    /// As answers carry them: receive with the lowest bit set, transmit cleared.
    const T2: NtpTimestamp = NtpTimestamp::from_parts(0xe9b5_a2c1, 0x2000_0001);
    const T3: NtpTimestamp = NtpTimestamp::from_parts(0xe9b5_a2c1, 0x2000_1000);

    fn request(version: u8, mode: Mode) -> Header {
        Header {
            leap: LeapIndicator::Unsynchronised,
            version,
            mode,
            stratum: 0,
            poll_log2: 10,
            precision_log2: -6,
            root_delay: NtpShort::from_bits(0x0001_0000),
            root_dispersion: NtpShort::from_bits(0x0001_0000),
            reference_id: ReferenceId::ZERO,
            reference_ts: NtpTimestamp::ZERO,
            origin_ts: NtpTimestamp::ZERO,
            receive_ts: NtpTimestamp::ZERO,
            transmit_ts: T1,
        }
    }

    fn bytes(h: &Header) -> [u8; HEADER_LEN] {
        let mut buf = [0u8; HEADER_LEN];
        h.serialize(&mut buf);
        buf
    }

    fn primary() -> ServerState {
        ServerState {
            leap: LeapIndicator::NoWarning,
            stratum: 1,
            reference_id: ReferenceId::from_ascii("PHC").unwrap(),
            reference_time: NtpTimestamp::from_parts(0xe9b5_a2c0, 0),
            root_delay_s: 0.0,
            root_dispersion_s: 0.000_5,
            precision_log2: -24,
        }
    }

    fn answer(request: &[u8], state: &ServerState) -> Result<Header, Drop> {
        let mut out = [0xaa; HEADER_LEN];
        let answer = respond(request, T2, T3, state, |_| None, &mut out)?;
        assert_eq!(answer.len, HEADER_LEN);
        assert!(!answer.interleaved);
        let reply = Packet::parse(&out).expect("a reply parses");
        assert_eq!(reply.mac, None);
        assert_eq!(reply.extension_fields().count(), 0);
        Ok(reply.header)
    }

    #[test]
    fn answers_a_v4_client_request() {
        let state = primary();
        let reply = answer(&bytes(&request(4, Mode::Client)), &state).unwrap();
        assert_eq!(
            reply,
            Header {
                leap: LeapIndicator::NoWarning,
                version: 4,
                mode: Mode::Server,
                stratum: 1,
                poll_log2: 10,
                precision_log2: -24,
                root_delay: NtpShort::ZERO,
                root_dispersion: NtpShort::from_seconds(0.000_5),
                reference_id: ReferenceId::PHC,
                reference_ts: state.reference_time,
                origin_ts: T1,
                receive_ts: T2,
                transmit_ts: T3,
            }
        );
        assert_eq!(reply.root_dispersion.to_bits(), 33, "0.5 ms rounded up");
    }

    #[test]
    fn echoes_older_versions_and_the_poll() {
        for version in 1..=3 {
            let mut req = request(version, Mode::Client);
            req.poll_log2 = -3;
            let reply = answer(&bytes(&req), &primary()).unwrap();
            assert_eq!(reply.version, version);
            assert_eq!(reply.poll_log2, -3);
            assert_eq!(reply.mode, Mode::Server);
            assert_eq!(reply.origin_ts, T1);
        }
    }

    #[test]
    fn drops_every_other_mode() {
        for mode in [
            Mode::Reserved,
            Mode::SymmetricActive,
            Mode::SymmetricPassive,
            Mode::Server,
            Mode::Broadcast,
            Mode::Control,
            Mode::Private,
        ] {
            let mut out = [0xaa; HEADER_LEN];
            let got = respond(&bytes(&request(4, mode)), T2, T3, &primary(), |_| None, &mut out);
            assert_eq!(got, Err(Drop::NotAClientRequest(mode)));
            assert_eq!(out, [0xaa; HEADER_LEN], "nothing written for a drop");
        }
    }

    #[test]
    fn never_answers_its_own_reply() {
        let mut out = [0u8; HEADER_LEN];
        respond(&bytes(&request(4, Mode::Client)), T2, T3, &primary(), |_| None, &mut out).unwrap();
        let mut again = [0u8; HEADER_LEN];
        assert_eq!(respond(&out, T2, T3, &primary(), |_| None, &mut again), Err(Drop::NotAClientRequest(Mode::Server)));
    }

    #[test]
    fn drops_malformed_requests() {
        let good = bytes(&request(4, Mode::Client));
        assert_eq!(answer(&good[..47], &primary()), Err(Drop::Malformed(ParseError::TooShort(47))));
        for version in [0, 5, 6, 7] {
            assert_eq!(
                answer(&bytes(&request(version, Mode::Client)), &primary()),
                Err(Drop::Malformed(ParseError::BadVersion(version)))
            );
        }
        let mut trailing = good.to_vec();
        trailing.extend([0; 7]);
        assert_eq!(answer(&trailing, &primary()), Err(Drop::Malformed(ParseError::BadTrailer(7))));
    }

    #[test]
    fn drops_requests_with_a_mac() {
        let mut with_mac = bytes(&request(4, Mode::Client)).to_vec();
        with_mac.extend([0x11; 20]);
        assert_eq!(answer(&with_mac, &primary()), Err(Drop::Authenticated));
    }

    #[test]
    fn ignores_extension_fields() {
        let mut with_field = bytes(&request(4, Mode::Client)).to_vec();
        // An NTS unique-identifier field (RFC 8915 §5.3): 4-byte header + 32 bytes.
        with_field.extend([0x01, 0x04, 0x00, 0x24]);
        with_field.extend([0x5a; 32]);
        let reply = answer(&with_field, &primary()).unwrap();
        assert_eq!(reply.origin_ts, T1);
    }

    #[test]
    fn unsynchronised_answer() {
        let reply = answer(&bytes(&request(4, Mode::Client)), &ServerState::unsynchronised()).unwrap();
        assert_eq!(reply.leap, LeapIndicator::Unsynchronised);
        assert_eq!(reply.stratum, 0);
        assert_eq!(reply.reference_id, ReferenceId::ZERO);
        assert_eq!(reply.kiss_code(), None, "not a kiss-o'-death");
        assert_eq!(reply.reference_ts, NtpTimestamp::ZERO);
        assert_eq!(reply.root_delay.to_seconds(), 1.0);
        assert_eq!(reply.root_dispersion.to_seconds(), 1.0);
        assert_eq!((reply.origin_ts, reply.receive_ts), (T1, T2));
        assert_eq!(reply.transmit_ts, T3);
    }

    #[test]
    fn local_stratum_answer() {
        let reply = answer(&bytes(&request(4, Mode::Client)), &ServerState::local(10)).unwrap();
        assert_eq!(reply.leap, LeapIndicator::NoWarning);
        assert_eq!(reply.stratum, 10);
        assert_eq!(reply.reference_id, ReferenceId::LOCL);
        assert_eq!(reply.reference_id.ascii(), Some("LOCL"));
        assert_eq!(reply.reference_ts.wrapping_sub_s(T2), -1.0);
        assert_eq!(ServerState::local(0).stratum, 1);
        assert_eq!(ServerState::local(16).stratum, 15);
    }

    #[test]
    fn reference_time_one_second_back_wraps_at_the_era_boundary() {
        let mut out = [0u8; HEADER_LEN];
        let receive = NtpTimestamp::from_parts(0, 0x4000_0000);
        respond(&bytes(&request(4, Mode::Client)), receive, receive, &ServerState::local(5), |_| None, &mut out)
            .unwrap();
        let reply = Header::from_bytes(&out);
        assert_eq!(reply.reference_ts, NtpTimestamp::from_parts(u32::MAX, 0x4000_0000));
    }

    #[test]
    fn stratum_16_and_up_go_out_as_0() {
        let mut state = primary();
        for stratum in [16, 17, 255] {
            state.stratum = stratum;
            let reply = answer(&bytes(&request(4, Mode::Client)), &state).unwrap();
            assert_eq!(reply.stratum, 0);
        }
    }

    #[test]
    fn saturating_root_values() {
        let mut state = primary();
        state.root_delay_s = -1.0;
        state.root_dispersion_s = 1e12;
        let reply = answer(&bytes(&request(4, Mode::Client)), &state).unwrap();
        assert_eq!(reply.root_delay, NtpShort::ZERO);
        assert_eq!(reply.root_dispersion, NtpShort::MAX);
    }

    #[test]
    fn every_output_byte_is_written() {
        let req = bytes(&request(4, Mode::Client));
        let mut a = [0x00; HEADER_LEN];
        let mut b = [0xff; HEADER_LEN];
        respond(&req, T2, T3, &primary(), |_| None, &mut a).unwrap();
        respond(&req, T2, T3, &primary(), |_| None, &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn an_interleaved_request_gets_the_previous_answers_transmit_time() {
        let previous_rx = interleave::mark_receive(NtpTimestamp::from_parts(0xe9b5_a2c0, 0x0000_0001));
        let previous_tx = NtpTimestamp::from_parts(0xe9b5_a2c0, 0x0000_4000);
        let client_rx = NtpTimestamp::from_parts(0xe9b5_a2c0, 0x0001_0000);
        let mut req = request(4, Mode::Client);
        (req.origin_ts, req.receive_ts) = (previous_rx, client_rx);
        let mut out = [0u8; HEADER_LEN];
        let mut asked_for = None;
        let got = respond(
            &bytes(&req),
            T2,
            T3,
            &primary(),
            |rx| {
                asked_for = Some(rx);
                Some(previous_tx)
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(asked_for, Some(previous_rx));
        assert_eq!(got, Answer { len: HEADER_LEN, interleaved: true, save_receive: Some(T2) });
        let reply = Header::from_bytes(&out);
        assert_eq!((reply.origin_ts, reply.receive_ts, reply.transmit_ts), (client_rx, T2, previous_tx));

        // Not found (the first interleaved request, or a replay): a basic answer,
        // and its receive timestamp is still saved for the next request.
        let got = respond(&bytes(&req), T2, T3, &primary(), |_| None, &mut out).unwrap();
        assert_eq!(got, Answer { len: HEADER_LEN, interleaved: false, save_receive: Some(T2) });
        let reply = Header::from_bytes(&out);
        assert_eq!((reply.origin_ts, reply.transmit_ts), (req.transmit_ts, T3));
    }

    #[test]
    fn a_basic_request_is_never_looked_up_and_costs_no_state() {
        let mut out = [0u8; HEADER_LEN];
        let got = respond(&bytes(&request(4, Mode::Client)), T2, T3, &primary(), |_| panic!("looked up"), &mut out);
        assert_eq!(got.unwrap().save_receive, None);
        // The marks: receive odd, transmit even, whatever the clock read.
        let even = NtpTimestamp::from_parts(1, 2);
        let odd = NtpTimestamp::from_parts(1, 3);
        respond(&bytes(&request(4, Mode::Client)), even, odd, &primary(), |_| None, &mut out).unwrap();
        let reply = Header::from_bytes(&out);
        assert_eq!((reply.receive_ts, reply.transmit_ts), (odd, even));
    }

    #[test]
    fn drop_reasons_read_well() {
        assert_eq!(Drop::NotAClientRequest(Mode::Control).to_string(), "mode control (6) is not a client request");
        assert_eq!(
            Drop::Malformed(ParseError::TooShort(3)).to_string(),
            "malformed request: 3 bytes is shorter than the 48-byte NTP header"
        );
    }
}
