//! `Packet::parse` on arbitrary datagrams: it must never panic, and whatever it
//! accepts must survive decode → encode → decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_proto::ntp::{
    EncodeError, HEADER_LEN, Header, MAX_EXTENSION_FIELDS, MAX_MAC_LEN, MD5_MAC_LEN, MIN_EXTENSION_FIELD_LEN, Packet,
};

fuzz_target!(|data: &[u8]| {
    // The header codec is total: any 48 bytes decode, and encode back bit for bit.
    if let Some(head) = data.first_chunk::<HEADER_LEN>() {
        let mut again = [0u8; HEADER_LEN];
        Header::from_bytes(head).serialize(&mut again);
        assert_eq!(&again, head, "header bytes do not round-trip");
    }

    let Ok(first) = Packet::parse(data) else {
        return;
    };
    check_shape(&first);

    // Encode into a buffer of exactly `encoded_len()` bytes.
    let len = first.encoded_len();
    let mut encoded = vec![0u8; len];
    assert_eq!(first.serialize(&mut encoded), Ok(len), "serialize into encoded_len() bytes");
    // Documented: a parsed packet serialises back to the bytes it was parsed from.
    assert_eq!(encoded, data, "serialize(parse(data)) != data");
    // One byte short must be refused, not truncated.
    assert_eq!(
        first.serialize(&mut vec![0u8; len - 1]),
        Err(EncodeError::BufferTooSmall { needed: len, available: len - 1 })
    );

    // Decode again: the same packet, field by field and as a whole.
    let second = match Packet::parse(&encoded) {
        Ok(p) => p,
        Err(e) => panic!("re-parse of serialised packet failed: {e:?}"),
    };
    assert_eq!(second.header, first.header, "header changed in the round trip");
    assert!(first.extension_fields().eq(second.extension_fields()), "extension fields changed in the round trip");
    assert_eq!(second.mac, first.mac, "MAC changed in the round trip");
    assert_eq!(second, first, "packet changed in the round trip");

    // Encode again: identical bytes.
    let mut reencoded = vec![0u8; second.encoded_len()];
    assert_eq!(second.serialize(&mut reencoded), Ok(len));
    assert_eq!(reencoded, encoded, "second serialisation differs from the first");
});

/// What `parse` promises about an accepted packet.
fn check_shape(p: &Packet<'_>) {
    assert!((1..=4).contains(&p.header.version), "accepted version {}", p.header.version);
    let mut fields = 0;
    let mut field_bytes = 0;
    for field in p.extension_fields() {
        assert!(p.header.version == 4, "extension field in a v{} packet", p.header.version);
        let field_len = 4 + field.body.len();
        assert!(field_len >= MIN_EXTENSION_FIELD_LEN && field_len % 4 == 0, "extension field of {field_len} bytes");
        fields += 1;
        field_bytes += field_len;
    }
    assert!(fields <= MAX_EXTENSION_FIELDS, "{fields} extension fields");
    let mac_len = p.mac.map_or(0, <[u8]>::len);
    assert!(p.mac.is_none() || mac_len == MD5_MAC_LEN || mac_len == MAX_MAC_LEN, "MAC of {mac_len} bytes");
    // The iterator sees every extension byte: nothing is dropped between parse and
    // serialize unseen by a reader of the fields.
    assert_eq!(HEADER_LEN + field_bytes + mac_len, p.encoded_len(), "extension fields do not cover the extensions");
    // Accessors a receiver calls on untrusted packets must not panic either.
    let _ = p.header.kiss_code();
    let _ = p.header.reference_id.to_string();
}
