//! Tests of plaintext envelopes: the format as it was before encryption, unchanged.

use super::*;
use proptest::prelude::*;

fn sample() -> Vec<u8> {
    (0..100_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect()
}

#[test]
fn header_layout_is_fixed() {
    let s = seal(b"hello hello hello hello hello hello", 3);
    assert_eq!(&s.body[0..4], b"PGA1");
    assert_eq!(s.body[4], 1);
    assert_eq!(&s.body[6..8], &[0, 0]);
    assert_eq!(u64::from_le_bytes(s.body[8..16].try_into().unwrap()), 35);
    assert_eq!(
        &s.body[16..48],
        blake3::hash(b"hello hello hello hello hello hello").as_bytes()
    );
    let h = Header::parse(&s.body).unwrap();
    assert_eq!(h.raw_len, 35);
    assert_eq!(h.hash, s.hash);
    assert_eq!(Header::parse(&h.encode()).unwrap(), h);
}

#[test]
fn compressible_uses_zstd_and_random_stays_raw() {
    let s = seal(&sample(), 3);
    assert_eq!(Header::parse(&s.body).unwrap().codec, Codec::Zstd);
    assert!(s.body.len() < 400_000 / 10);
    // 32 bytes of hash output: incompressible, and a zstd frame adds overhead.
    let noise = blake3::hash(b"noise").as_bytes().to_vec();
    let s = seal(&noise, 3);
    assert_eq!(Header::parse(&s.body).unwrap().codec, Codec::None);
    assert_eq!(open(&s.body).unwrap(), noise);
}

#[test]
fn empty_object_round_trips() {
    let s = seal(b"", 3);
    assert_eq!(s.raw_len, 0);
    assert_eq!(open(&s.body).unwrap(), b"");
}

#[test]
fn any_flipped_byte_is_detected() {
    let raw = sample();
    let s = seal(&raw, 3);
    // Every header byte, and a spread of payload bytes.
    let positions: Vec<usize> = (0..HEADER_LEN)
        .chain((HEADER_LEN..s.body.len()).step_by(97))
        .chain([s.body.len() - 1])
        .collect();
    for pos in positions {
        let mut b = s.body.to_vec();
        b[pos] ^= 0x01;
        let r = open(&b);
        // Bit 0 of the flags makes the object look encrypted: refused as such.
        let refused = |e: &StoreError| e.is_corrupt() || (pos == 6 && e.is_encrypted());
        assert!(
            matches!(&r, Err(e) if refused(e)),
            "flip at {pos} not detected: {r:?}"
        );
    }
}

#[test]
fn truncation_and_trailing_bytes_are_detected() {
    let s = seal(&sample(), 3);
    for len in [
        0,
        3,
        HEADER_LEN - 1,
        HEADER_LEN,
        HEADER_LEN + 5,
        s.body.len() - 1,
    ] {
        assert!(open(&s.body[..len]).unwrap_err().is_corrupt(), "len {len}");
    }
    let mut long = s.body.to_vec();
    long.extend_from_slice(&[0, 0, 0]);
    assert!(open(&long).unwrap_err().is_corrupt());
    // A second valid frame appended is not accepted either.
    long.truncate(s.body.len());
    long.extend_from_slice(&zstd::bulk::compress(b"x", 3).unwrap());
    assert!(open(&long).unwrap_err().is_corrupt());
}

#[test]
fn huge_declared_length_is_refused_before_allocating() {
    let s = seal(b"abc", 3);
    let mut b = s.body.to_vec();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = open(&b).unwrap_err();
    assert!(e.to_string().contains("exceeds"), "{e}");
}

#[test]
fn declared_length_smaller_than_frame_is_refused() {
    let raw = sample();
    let s = seal(&raw, 3);
    let mut b = s.body.to_vec();
    b[8..16].copy_from_slice(&100u64.to_le_bytes());
    let e = open(&b).unwrap_err();
    assert!(e.to_string().contains("more than the declared"), "{e}");
}

#[test]
fn encrypted_and_reserved_flags_are_refused() {
    let s = seal(b"abc", 3);
    for flags in [0x8000, 0x0002, FLAG_ENCRYPTED | 0x0100] {
        let mut b = s.body.to_vec();
        b[6..8].copy_from_slice(&flags.to_le_bytes());
        let e = open(&b).unwrap_err();
        assert!(e.is_corrupt() && e.to_string().contains("reserved"), "{e}");
    }
    // The encrypted flag on a plaintext reader: an encrypted object, refused as such.
    let mut b = s.body.to_vec();
    b[6..8].copy_from_slice(&FLAG_ENCRYPTED.to_le_bytes());
    b.resize(ENCRYPTED_HEADER_LEN + 20, 0);
    let e = open(&b).unwrap_err().with_key("wal/x");
    assert!(e.is_encrypted(), "{e}");
    assert!(
        e.to_string().contains("PGAGENT_ENCRYPTION_PASSPHRASE"),
        "{e}"
    );
    // Too short for its nonce.
    b.truncate(HEADER_LEN + 3);
    assert!(open(&b).unwrap_err().is_corrupt());
}

/// A plaintext object is byte for byte what this format wrote before encryption existed:
/// a fixed header, then the zstd frame, nothing more.
#[test]
fn plaintext_objects_are_unchanged() {
    let raw = b"hello hello hello hello hello hello hello hello";
    let s = seal(raw, 3);
    let mut expected = Vec::new();
    expected.extend_from_slice(b"PGA1\x01\x01\x00\x00");
    expected.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    expected.extend_from_slice(blake3::hash(raw).as_bytes());
    expected.extend_from_slice(&zstd::bulk::compress(raw, 3).unwrap());
    assert_eq!(&s.body[..], &expected[..]);
    assert_eq!(hex::encode(&s.body[..HEADER_LEN]), FIXED_HEADER);
    // The `_for` forms without a cipher write the very same bytes.
    assert_eq!(seal_for(raw, 3, None, "wal/x").body, s.body);
    let streamed = seal_reader(&raw[..], Some(raw.len() as u64), 3).unwrap();
    let streamed_for = seal_reader_for(&raw[..], Some(raw.len() as u64), 3, None, "wal/x").unwrap();
    assert_eq!(streamed.body, streamed_for.body);
    assert_eq!(&streamed.body[..8], b"PGA1\x01\x01\x00\x00");
    assert_eq!(open_for(&s.body, None, "wal/x").unwrap(), raw);
    let (name, chunk) = seal_chunk(raw, 3, None, |h| format!("chunks/{}", h.to_hex()));
    assert_eq!(name, format!("chunks/{}", blake3::hash(raw).to_hex()));
    assert_eq!(chunk.body, s.body);
}

/// The header of that object: "PGA1", version 1, zstd, no flags, 47 bytes, its blake3.
const FIXED_HEADER: &str = "50474131010100002f00000000000000\
     7a3520fbe7dab1a1d0ee8a7ccda196fbd9cffcdfa23d964b723f9eb69d553f88";

#[test]
fn open_into_streams_the_same_bytes() {
    let raw = sample();
    let s = seal(&raw, 1);
    let mut out = Vec::new();
    assert_eq!(open_into(&s.body, &mut out).unwrap(), raw.len() as u64);
    assert_eq!(out, raw);
}

proptest! {
    #[test]
    fn round_trip(raw in proptest::collection::vec(any::<u8>(), 0..5000), level in 1i32..6) {
        let s = seal(&raw, level);
        prop_assert_eq!(s.raw_len, raw.len() as u64);
        prop_assert_eq!(s.hash, blake3::hash(&raw));
        prop_assert_eq!(open(&s.body).unwrap(), raw);
    }

    #[test]
    fn round_trip_repetitive(byte in any::<u8>(), len in 0usize..100_000) {
        let raw = vec![byte; len];
        prop_assert_eq!(open(&seal(&raw, 3).body).unwrap(), raw);
    }

    /// A changed byte of a plaintext envelope never yields other bytes: it is refused, or
    /// (a bit zstd does not read, such as a frame header bit that changes no parameter)
    /// the very same verified bytes come out. An encrypted envelope refuses every change
    /// (`encrypted_tests`).
    #[test]
    fn random_corruption_never_yields_other_bytes(pos in 0usize..10_000, mask in 1u8..=255) {
        let raw: Vec<u8> = (0..20_000u32).map(|i| (i % 13) as u8).collect();
        let s = seal(&raw, 3);
        let mut b = s.body.to_vec();
        let pos = pos % b.len();
        b[pos] ^= mask;
        if let Ok(opened) = open(&b) {
            prop_assert_eq!(opened, raw);
        }
    }
}

#[test]
fn streaming_seal_opens_to_the_same_bytes_and_hash() {
    let raw: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i * 7 % 251) as u8).collect();
    let sealed = seal_reader(&raw[..], Some(raw.len() as u64), 3).unwrap();
    assert_eq!(sealed.raw_len, raw.len() as u64);
    assert_eq!(sealed.hash, blake3::hash(&raw));
    assert_eq!(
        sealed.hash,
        seal(&raw, 3).hash,
        "same hash as the in-memory form"
    );
    assert_eq!(open(&sealed.body).unwrap(), raw);
    let empty = seal_reader(&[][..], None, 3).unwrap();
    assert!(
        seal_reader(&raw[..], Some(5), 3).is_err(),
        "a wrong size hint is an error"
    );
    assert_eq!(open(&empty.body).unwrap(), Vec::<u8>::new());
}
