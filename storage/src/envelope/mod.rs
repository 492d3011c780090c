//! The object envelope: every object body verifies itself.
//!
//! Layout (DESIGN.md, "Object envelope"), all integers little-endian:
//!
//! ```text
//! offset size
//!      0    4  magic "PGA1"
//!      4    1  format version (1)
//!      5    1  codec: 0 = none (payload is the raw bytes), 1 = zstd (payload is one zstd frame)
//!      6    2  flags: bit 0 = encrypted; other bits reserved, 0
//!      8    8  raw length in bytes
//!     16   32  blake3 hash of the raw bytes; encrypted: the keyed blake3 hash
//!     48   24  encrypted only: the XChaCha20-Poly1305 nonce, random for each object
//! 48 or 72  …  payload; encrypted: the payload sealed with XChaCha20-Poly1305, then its
//!              16-byte tag
//! ```
//!
//! A plaintext header is [`HEADER_LEN`] (48) bytes, an encrypted one [`ENCRYPTED_HEADER_LEN`]
//! (72): a reader that fetches only the header (a ranged GET) asks for [`MAX_HEADER_LEN`].
//!
//! Encryption (see [`crate::crypto`]): the hash field holds the blake3 hash keyed with the
//! store's content hash key, so the bucket shows no plaintext hash; the payload is sealed
//! with the store's payload key and a fresh random nonce, with the associated data
//! `name || 0x00 || header` — the object's store key (e.g. `wal/000000010000000000000003`;
//! keys never hold NUL) and all 72 header bytes. A ciphertext copied under another name, or
//! any byte changed anywhere, is refused before anything is decompressed.
//!
//! A reader checks the magic, version, flags, the declared length (never above
//! [`MAX_RAW_LEN`]), authenticates an encrypted payload, decodes without producing more than
//! the declared length, then compares length and hash: nothing unverified reaches
//! PostgreSQL or PGDATA. Plaintext objects are written and read exactly as before
//! encryption existed.
//!
//! [`seal`], [`seal_reader`], [`open`] and [`open_into`] are the plaintext forms; the `_for`
//! forms take the store's cipher (`None` for a plaintext store) and the object's name, and
//! [`seal_chunk`] names a content-addressed object after its own (keyed) hash.

mod open;
mod seal;

#[cfg(test)]
mod encrypted_tests;
#[cfg(test)]
mod tests;

use bytes::Bytes;

use crate::crypto::NONCE_LEN;
use crate::error::StoreError;

pub use open::{open, open_for, open_into, open_into_for, verify_stored};
pub use seal::{content_hash, seal, seal_chunk, seal_for, seal_reader, seal_reader_for};

/// Magic bytes at offset 0.
pub const MAGIC: [u8; 4] = *b"PGA1";
/// Envelope format version written by this build.
pub const FORMAT_VERSION: u8 = 1;
/// Length of a plaintext header in bytes.
pub const HEADER_LEN: usize = 48;
/// Length of an encrypted header in bytes (the plaintext fields, then the nonce).
pub const ENCRYPTED_HEADER_LEN: usize = HEADER_LEN + NONCE_LEN;
/// The longest header: what a reader that fetches only the header must ask for.
pub const MAX_HEADER_LEN: usize = ENCRYPTED_HEADER_LEN;
/// Largest raw length a reader accepts (4 GiB); a larger declared length is corruption.
pub const MAX_RAW_LEN: u64 = 4 << 30;
/// Flag bit: the header carries a nonce and the payload is AEAD-sealed.
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
    /// Payload codec (of the payload before sealing, when encrypted).
    pub codec: Codec,
    /// Flag bits: [`FLAG_ENCRYPTED`] or 0.
    pub flags: u16,
    /// Length of the raw bytes in bytes.
    pub raw_len: u64,
    /// blake3 hash of the raw bytes; in an encrypted object the keyed hash
    /// ([`ObjectCipher::hasher`](crate::crypto::ObjectCipher::hasher)).
    pub hash: blake3::Hash,
    /// The AEAD nonce: `Some` exactly when [`FLAG_ENCRYPTED`] is set.
    pub nonce: Option<[u8; NONCE_LEN]>,
}

impl Header {
    /// Parses the header at the start of `bytes` (extra bytes are ignored): the first
    /// [`HEADER_LEN`] bytes, or [`ENCRYPTED_HEADER_LEN`] when the encrypted flag is set.
    ///
    /// Errors: [`StoreError::Corrupt`] (with an empty key, see [`StoreError::with_key`]) if
    /// the input is short, the magic or version is wrong, a reserved flag is set, the codec
    /// is unknown or the length exceeds [`MAX_RAW_LEN`].
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
        if flags & !FLAG_ENCRYPTED != 0 {
            return Err(corrupt(format!("reserved flag bits set: {flags:#06x}")));
        }
        let raw_len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        if raw_len > MAX_RAW_LEN {
            return Err(corrupt(format!(
                "declared raw length {raw_len} exceeds the {MAX_RAW_LEN}-byte limit"
            )));
        }
        let hash_bytes: [u8; 32] = bytes[16..48].try_into().expect("32 bytes");
        let nonce = if flags & FLAG_ENCRYPTED != 0 {
            let n = bytes.get(HEADER_LEN..ENCRYPTED_HEADER_LEN).ok_or_else(|| {
                corrupt(format!(
                    "{} bytes, shorter than the {ENCRYPTED_HEADER_LEN}-byte encrypted header",
                    bytes.len()
                ))
            })?;
            Some(n.try_into().expect("24 bytes"))
        } else {
            None
        };
        Ok(Header {
            version,
            codec,
            flags,
            raw_len,
            hash: blake3::Hash::from_bytes(hash_bytes),
            nonce,
        })
    }

    /// Whether the payload is AEAD-sealed.
    pub fn is_encrypted(&self) -> bool {
        self.nonce.is_some()
    }

    /// Length of the encoded header: [`HEADER_LEN`] or [`ENCRYPTED_HEADER_LEN`].
    pub fn encoded_len(&self) -> usize {
        if self.is_encrypted() {
            ENCRYPTED_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// Encodes the header into its [`Header::encoded_len`] bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&MAGIC);
        out.push(self.version);
        out.push(self.codec as u8);
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(self.hash.as_bytes());
        if let Some(n) = &self.nonce {
            out.extend_from_slice(n);
        }
        out
    }
}

/// The associated data of an encrypted payload: the object's name, a NUL (which no store
/// key holds, so the split is unambiguous), and the whole encoded header.
fn associated_data(name: &str, header: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(name.len() + 1 + header.len());
    ad.extend_from_slice(name.as_bytes());
    ad.push(0);
    ad.extend_from_slice(header);
    ad
}

/// A sealed object: envelope header + payload, ready to upload.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The complete object body (header and payload).
    pub body: Bytes,
    /// The hash in the header: blake3 of the raw bytes, keyed in an encrypted store (the
    /// content address of chunks, and what [`crate::immutable::put_immutable`] compares).
    pub hash: blake3::Hash,
    /// Length of the raw bytes in bytes.
    pub raw_len: u64,
}
