//! Tests of encrypted envelopes.

use proptest::prelude::*;

use super::*;
use crate::crypto::{MasterKey, ObjectCipher, TAG_LEN};

const NAME: &str = "wal/000000010000000000000003";

fn cipher() -> ObjectCipher {
    MasterKey::generate().cipher()
}

fn sample() -> Vec<u8> {
    (0..50_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect()
}

#[test]
fn round_trip_in_memory_streaming_and_into() {
    let c = cipher();
    let noise = blake3::hash(b"noise").as_bytes().repeat(4);
    for raw in [sample(), Vec::new(), noise] {
        let s = seal_for(&raw, 3, Some(&c), NAME);
        assert_eq!(s.raw_len, raw.len() as u64);
        assert_eq!(s.hash, c.keyed_hash(&raw));
        assert_eq!(open_for(&s.body, Some(&c), NAME).unwrap(), raw);
        let mut out = Vec::new();
        let n = open_into_for(&s.body, Some(&c), NAME, &mut out).unwrap();
        assert_eq!((n, &out), (raw.len() as u64, &raw));

        let r = seal_reader_for(&raw[..], Some(raw.len() as u64), 3, Some(&c), NAME).unwrap();
        assert_eq!(r.hash, s.hash, "both forms hash the same way");
        assert_eq!(open_for(&r.body, Some(&c), NAME).unwrap(), raw);
    }
}

#[test]
fn header_carries_flag_keyed_hash_and_a_fresh_nonce() {
    let c = cipher();
    let raw = sample();
    let a = seal_for(&raw, 3, Some(&c), NAME);
    let b = seal_for(&raw, 3, Some(&c), NAME);
    let h = Header::parse(&a.body).unwrap();
    assert!(h.is_encrypted());
    assert_eq!(h.flags, FLAG_ENCRYPTED);
    assert_eq!(h.encoded_len(), 72);
    assert_eq!(MAX_HEADER_LEN, 72);
    assert_eq!(h.codec, Codec::Zstd);
    assert_eq!(h.raw_len, raw.len() as u64);
    assert_eq!(h.hash, c.keyed_hash(&raw));
    assert_eq!(Header::parse(&h.encode()).unwrap(), h);
    assert_eq!(&h.encode()[..], &a.body[..72]);
    // Same content: same (keyed) hash, so deduplication and put_immutable still work, but
    // a new nonce and so a different body.
    assert_eq!(a.hash, b.hash);
    assert_ne!(h.nonce, Header::parse(&b.body).unwrap().nonce);
    assert_ne!(a.body, b.body);
    // The body is header + sealed zstd frame + tag.
    let frame = zstd::bulk::compress(&raw, 3).unwrap();
    assert_eq!(a.body.len(), 72 + frame.len() + TAG_LEN);
    // A header-only ranged read of MAX_HEADER_LEN bytes is enough to parse it.
    assert_eq!(Header::parse(&a.body[..MAX_HEADER_LEN]).unwrap(), h);
    assert!(Header::parse(&a.body[..HEADER_LEN])
        .unwrap_err()
        .is_corrupt());
}

#[test]
fn keyed_hash_reveals_neither_the_plain_hash_nor_the_content() {
    let c = cipher();
    let raw = b"PostgreSQL WAL record with a secret: 4111 1111 1111 1111".repeat(50);
    let s = seal_for(&raw, 3, Some(&c), NAME);
    let plain = blake3::hash(&raw);
    assert_ne!(s.hash, plain);
    assert_ne!(
        s.hash,
        cipher().keyed_hash(&raw),
        "another store hashes differently"
    );
    let has = |needle: &[u8]| s.body.windows(needle.len()).any(|w| w == needle);
    assert!(!has(plain.as_bytes()));
    assert!(!has(b"4111 1111"));
    assert!(!has(&zstd::bulk::compress(&raw, 3).unwrap()[4..20]));
    // A content-addressed name uses the keyed hash too.
    let (name, chunk) = seal_chunk(&raw, 3, Some(&c), |h| crate::layout::chunk_key(&h.to_hex()));
    assert_eq!(name, crate::layout::chunk_key(&c.keyed_hash(&raw).to_hex()));
    assert!(!name.contains(plain.to_hex().as_str()));
    assert_eq!(open_for(&chunk.body, Some(&c), &name).unwrap(), raw);
}

#[test]
fn another_key_or_another_name_is_refused() {
    let c = cipher();
    let s = seal_for(&sample(), 3, Some(&c), NAME);
    let e = open_for(&s.body, Some(&cipher()), NAME).unwrap_err();
    assert!(
        e.is_corrupt() && e.to_string().contains("authentication failed"),
        "{e}"
    );
    assert_eq!(e.key(), Some(NAME));
    // The same ciphertext copied under another segment's name.
    let e = open_for(&s.body, Some(&c), "wal/000000010000000000000004").unwrap_err();
    assert!(e.is_corrupt(), "{e}");
    let e = open_for(&s.body, Some(&c), "").unwrap_err();
    assert!(e.is_corrupt(), "{e}");
}

#[test]
fn every_flipped_byte_and_every_truncation_is_refused() {
    let c = cipher();
    let raw = sample()[..3000].to_vec();
    let s = seal_for(&raw, 3, Some(&c), NAME);
    for pos in 0..s.body.len() {
        for mask in [0x01u8, 0x80] {
            let mut b = s.body.to_vec();
            b[pos] ^= mask;
            let r = open_for(&b, Some(&c), NAME);
            // Bit 0 of the flags makes it look plaintext: refused as such.
            let refused =
                |e: &StoreError| e.is_corrupt() || (pos == 6 && mask == 1 && e.is_not_encrypted());
            assert!(
                matches!(&r, Err(e) if refused(e)),
                "flip {mask:#x} at {pos} not refused: {r:?}"
            );
        }
    }
    for len in 0..s.body.len() {
        assert!(
            open_for(&s.body[..len], Some(&c), NAME).is_err(),
            "len {len}"
        );
    }
    let mut long = s.body.to_vec();
    long.push(0);
    assert!(open_for(&long, Some(&c), NAME).unwrap_err().is_corrupt());
}

#[test]
fn encryption_mismatches_are_their_own_errors() {
    let c = cipher();
    let enc = seal_for(b"abc", 3, Some(&c), NAME);
    let e = open_for(&enc.body, None, NAME).unwrap_err();
    assert!(
        e.is_encrypted() && e.is_encryption_mismatch() && !e.is_corrupt(),
        "{e}"
    );
    assert_eq!(e.key(), Some(NAME));
    assert!(e.to_string().contains("encryption.passphrase_file"), "{e}");
    assert!(open(&enc.body).unwrap_err().is_encrypted());

    let plain = seal(b"abc", 3);
    let e = open_for(&plain.body, Some(&c), NAME).unwrap_err();
    assert!(
        e.is_not_encrypted() && e.is_encryption_mismatch() && !e.is_corrupt(),
        "{e}"
    );
    let mut out = Vec::new();
    let e = open_into_for(&plain.body, Some(&c), NAME, &mut out).unwrap_err();
    assert!(e.is_not_encrypted(), "{e}");
    assert!(out.is_empty());
}

proptest! {
    #[test]
    fn round_trip(raw in proptest::collection::vec(any::<u8>(), 0..5000), level in 1i32..6) {
        let c = cipher();
        let s = seal_for(&raw, level, Some(&c), NAME);
        prop_assert_eq!(s.hash, c.keyed_hash(&raw));
        prop_assert_eq!(open_for(&s.body, Some(&c), NAME).unwrap(), raw);
    }

    #[test]
    fn random_corruption_never_passes(pos in 0usize..10_000, mask in 1u8..=255) {
        let c = cipher();
        let raw: Vec<u8> = (0..20_000u32).map(|i| (i % 13) as u8).collect();
        let s = seal_for(&raw, 3, Some(&c), NAME);
        let mut b = s.body.to_vec();
        let pos = pos % b.len();
        b[pos] ^= mask;
        prop_assert!(open_for(&b, Some(&c), NAME).is_err());
    }
}
