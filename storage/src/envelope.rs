//! The object envelope: every object body verifies itself.
//!
//! Layout (DESIGN.md, "Object envelope"), all integers little-endian:
//!
//! ```text
//! offset size
//!      0    4  magic "PGA1"
//!      4    1  format version (1)
//!      5    1  codec: 0 = none (payload is the raw bytes), 1 = zstd (payload is one zstd frame)
//!      6    2  flags: bit 0 = encrypted (not supported by this version); other bits reserved, 0
//!      8    8  raw length in bytes
//!     16   32  blake3 hash of the raw bytes
//!     48    …  payload
//! ```
//!
//! A reader checks the magic, version, flags, the declared length (never above
//! [`MAX_RAW_LEN`]), decodes without producing more than the declared length, then compares
//! length and hash: nothing unverified reaches PostgreSQL or PGDATA.

use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::StoreError;

/// Magic bytes at offset 0.
pub const MAGIC: [u8; 4] = *b"PGA1";
/// Envelope format version written by this build.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the header in bytes.
pub const HEADER_LEN: usize = 48;
/// Largest raw length a reader accepts (4 GiB); a larger declared length is corruption.
pub const MAX_RAW_LEN: u64 = 4 << 30;
/// Flag bit: the payload is AEAD-sealed (reserved for encryption).
pub const FLAG_ENCRYPTED: u16 = 1;

/// Payload encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Payload is the raw bytes.
    None = 0,
    /// Payload is one zstd frame.
    Zstd = 1,
}

/// A parsed envelope header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version (always [`FORMAT_VERSION`] after a successful parse).
    pub version: u8,
    /// Payload codec.
    pub codec: Codec,
    /// Flag bits (0 in this version).
    pub flags: u16,
    /// Length of the raw bytes in bytes.
    pub raw_len: u64,
    /// blake3 hash of the raw bytes.
    pub hash: blake3::Hash,
}

impl Header {
    /// Parses the first [`HEADER_LEN`] bytes of `bytes` (extra bytes are ignored).
    ///
    /// Errors: [`StoreError::Corrupt`] (with an empty key, see
    /// [`StoreError::with_key`]) if the input is short, the magic or version is wrong, a flag
    /// is set (encryption or reserved bits), the codec is unknown or the length exceeds
    /// [`MAX_RAW_LEN`].
    pub fn parse(bytes: &[u8]) -> Result<Header, StoreError> {
        let corrupt = |d: String| StoreError::corrupt("", d);
        if bytes.len() < HEADER_LEN {
            return Err(corrupt(format!(
                "{} bytes, shorter than the {HEADER_LEN}-byte envelope header",
                bytes.len()
            )));
        }
        if bytes[0..4] != MAGIC {
            return Err(corrupt(format!(
                "bad magic {:02x?}, expected \"PGA1\" (not a pgagent object?)",
                &bytes[0..4]
            )));
        }
        let version = bytes[4];
        if version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "envelope version {version}, this build reads {FORMAT_VERSION}"
            )));
        }
        let codec = match bytes[5] {
            0 => Codec::None,
            1 => Codec::Zstd,
            c => return Err(corrupt(format!("unknown codec {c}"))),
        };
        let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
        if flags & FLAG_ENCRYPTED != 0 {
            return Err(corrupt(
                "object is encrypted, which this build cannot read".to_string(),
            ));
        }
        if flags != 0 {
            return Err(corrupt(format!("reserved flag bits set: {flags:#06x}")));
        }
        let raw_len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        if raw_len > MAX_RAW_LEN {
            return Err(corrupt(format!(
                "declared raw length {raw_len} exceeds the {MAX_RAW_LEN}-byte limit"
            )));
        }
        let hash_bytes: [u8; 32] = bytes[16..48].try_into().expect("32 bytes");
        Ok(Header {
            version,
            codec,
            flags,
            raw_len,
            hash: blake3::Hash::from_bytes(hash_bytes),
        })
    }

    /// Encodes the header into its [`HEADER_LEN`] bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = self.version;
        out[5] = self.codec as u8;
        out[6..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..16].copy_from_slice(&self.raw_len.to_le_bytes());
        out[16..48].copy_from_slice(self.hash.as_bytes());
        out
    }
}

/// A sealed object: envelope header + payload, ready to upload.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The complete object body (header and payload).
    pub body: Bytes,
    /// blake3 hash of the raw bytes (also in the header; the content address of chunks).
    pub hash: blake3::Hash,
    /// Length of the raw bytes in bytes.
    pub raw_len: u64,
}

/// Seals `raw` with zstd at `level` (1..=22; 0 means zstd's default, 3).
///
/// When compression does not make the payload smaller (already-compressed data), the raw
/// bytes are stored with [`Codec::None`] instead. Panics if `raw` exceeds [`MAX_RAW_LEN`],
/// which readers would refuse.
pub fn seal(raw: &[u8], level: i32) -> Sealed {
    assert!(
        raw.len() as u64 <= MAX_RAW_LEN,
        "object of {} bytes exceeds the envelope limit",
        raw.len()
    );
    let hash = blake3::hash(raw);
    let compressed = zstd::bulk::compress(raw, level).expect("zstd compression into memory");
    let (codec, payload): (Codec, &[u8]) = if compressed.len() < raw.len() {
        (Codec::Zstd, &compressed)
    } else {
        (Codec::None, raw)
    };
    let header = Header {
        version: FORMAT_VERSION,
        codec,
        flags: 0,
        raw_len: raw.len() as u64,
        hash,
    };
    let mut body = BytesMut::with_capacity(HEADER_LEN + payload.len());
    body.put_slice(&header.encode());
    body.put_slice(payload);
    Sealed {
        body: body.freeze(),
        hash,
        raw_len: raw.len() as u64,
    }
}

/// Streaming form of [`seal`] for large objects (WAL segments): reads `raw` in 1 MiB pieces,
/// hashing and compressing as it goes, so memory stays at the compressed size plus the
/// compressor's window instead of holding the raw bytes and a worst-case output buffer.
/// The payload is always a zstd frame (on incompressible input it is a few bytes larger than
/// the input, which [`seal`] would store raw instead).
///
/// `size_hint` is the exact raw length when known (a staged segment's file size): zstd then
/// picks the parameters of a one-shot compression for that size and records it in the frame.
///
/// Errors: the reader's I/O errors, `InvalidData` past [`MAX_RAW_LEN`] bytes, or a reader that
/// yields a different length than `size_hint`.
pub fn seal_reader(
    mut raw: impl Read,
    size_hint: Option<u64>,
    level: i32,
) -> std::io::Result<Sealed> {
    let mut body = Vec::with_capacity(HEADER_LEN + (1 << 20));
    body.extend_from_slice(&[0u8; HEADER_LEN]);
    let mut encoder = zstd::stream::write::Encoder::new(body, level)?;
    encoder.set_pledged_src_size(size_hint)?;
    encoder.include_contentsize(size_hint.is_some())?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut raw_len = 0u64;
    loop {
        let n = match raw.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        raw_len += n as u64;
        if raw_len > MAX_RAW_LEN {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "object exceeds the envelope limit",
            ));
        }
        hasher.update(&buf[..n]);
        encoder.write_all(&buf[..n])?;
    }
    let mut body = encoder.finish()?;
    let hash = hasher.finalize();
    let header = Header {
        version: FORMAT_VERSION,
        codec: Codec::Zstd,
        flags: 0,
        raw_len,
        hash,
    };
    body[..HEADER_LEN].copy_from_slice(&header.encode());
    body.shrink_to_fit();
    Ok(Sealed {
        body: Bytes::from(body),
        hash,
        raw_len,
    })
}

/// Opens an envelope and returns the verified raw bytes.
///
/// Errors: [`StoreError::Corrupt`] (empty key; attach one with [`StoreError::with_key`]) on
/// any header problem (see [`Header::parse`]), an undecodable or trailing-garbage payload, a
/// decoded length different from the declared one, or a hash mismatch. Never allocates more
/// than the declared raw length (itself capped at [`MAX_RAW_LEN`]).
pub fn open(body: &[u8]) -> Result<Vec<u8>, StoreError> {
    let header = Header::parse(body)?;
    // Grow as data arrives rather than trusting the declared length for one allocation.
    let mut out = Vec::with_capacity(header.raw_len.min(64 << 20) as usize);
    open_into(body, &mut out)?;
    Ok(out)
}

/// Streaming form of [`open`]: decodes into `out` and verifies at the end.
///
/// Returns the raw length in bytes. Bytes reach `out` before the hash is checked, so on error
/// the caller must discard what was written (write to a temporary file and rename it only on
/// success). I/O errors of `out` are reported as [`StoreError::Other`].
pub fn open_into(body: &[u8], out: &mut impl Write) -> Result<u64, StoreError> {
    let header = Header::parse(body)?;
    let payload = &body[HEADER_LEN..];
    let mut hasher = blake3::Hasher::new();
    let written = match header.codec {
        Codec::None => {
            if payload.len() as u64 != header.raw_len {
                return Err(StoreError::corrupt(
                    "",
                    format!(
                        "payload is {} bytes, header declares {}",
                        payload.len(),
                        header.raw_len
                    ),
                ));
            }
            hasher.update(payload);
            write_out(out, payload)?;
            payload.len() as u64
        }
        Codec::Zstd => decode_zstd(payload, header.raw_len, &mut hasher, out)?,
    };
    if written != header.raw_len {
        return Err(StoreError::corrupt(
            "",
            format!(
                "decoded {written} bytes, header declares {}",
                header.raw_len
            ),
        ));
    }
    let actual = hasher.finalize();
    if actual != header.hash {
        return Err(StoreError::corrupt(
            "",
            format!(
                "blake3 mismatch: header {}, content {}",
                header.hash.to_hex(),
                actual.to_hex()
            ),
        ));
    }
    Ok(written)
}

fn write_out(out: &mut impl Write, buf: &[u8]) -> Result<(), StoreError> {
    out.write_all(buf).map_err(|e| StoreError::Other {
        key: String::new(),
        op: crate::error::Op::Get,
        detail: format!("writing decoded object: {e}"),
        source: Some(Box::new(e)),
    })
}

/// Decodes exactly one zstd frame spanning all of `payload`, producing at most `limit` + 1
/// bytes (one more than allowed is enough to detect an overlong frame).
fn decode_zstd(
    payload: &[u8],
    limit: u64,
    hasher: &mut blake3::Hasher,
    out: &mut impl Write,
) -> Result<u64, StoreError> {
    match zstd::zstd_safe::find_frame_compressed_size(payload) {
        Ok(n) if n == payload.len() => {}
        Ok(n) => {
            return Err(StoreError::corrupt(
                "",
                format!(
                    "zstd frame is {n} bytes but the payload is {} bytes",
                    payload.len()
                ),
            ))
        }
        Err(code) => {
            return Err(StoreError::corrupt(
                "",
                format!(
                    "payload is not a zstd frame: {}",
                    zstd::zstd_safe::get_error_name(code)
                ),
            ))
        }
    }
    let decoder = zstd::stream::read::Decoder::with_buffer(payload)
        .map_err(|e| StoreError::corrupt("", format!("zstd: {e}")))?
        .single_frame();
    let mut limited = decoder.take(limit + 1);
    let mut buf = vec![0u8; 128 << 10];
    let mut total = 0u64;
    loop {
        let n = match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::corrupt("", format!("zstd: {e}"))),
        };
        total += n as u64;
        if total > limit {
            return Err(StoreError::corrupt(
                "",
                format!("zstd frame decodes to more than the declared {limit} bytes"),
            ));
        }
        hasher.update(&buf[..n]);
        write_out(out, &buf[..n])?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
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
            assert!(
                matches!(&r, Err(e) if e.is_corrupt()),
                "flip at {pos} not detected"
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
        for flags in [FLAG_ENCRYPTED, 0x8000] {
            let mut b = s.body.to_vec();
            b[6..8].copy_from_slice(&flags.to_le_bytes());
            assert!(open(&b).unwrap_err().is_corrupt());
        }
    }

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

        #[test]
        fn random_corruption_never_passes(pos in 0usize..10_000, mask in 1u8..=255) {
            let raw: Vec<u8> = (0..20_000u32).map(|i| (i % 13) as u8).collect();
            let s = seal(&raw, 3);
            let mut b = s.body.to_vec();
            let pos = pos % b.len();
            b[pos] ^= mask;
            prop_assert!(open(&b).is_err());
        }
    }
}

#[cfg(test)]
mod seal_reader_tests {
    use super::*;

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
}
