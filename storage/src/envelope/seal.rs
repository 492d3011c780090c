//! Writing envelopes: in memory ([`seal_for`], [`seal_chunk`]) and streaming
//! ([`seal_reader_for`]), plaintext or encrypted.

use std::io::{Read, Write};

use bytes::Bytes;

use super::{associated_data, Codec, Header, Sealed, FORMAT_VERSION, MAX_RAW_LEN};
use super::{ENCRYPTED_HEADER_LEN, FLAG_ENCRYPTED, HEADER_LEN};
use crate::crypto::{random_nonce, ObjectCipher, TAG_LEN};

/// Seals `raw` as a plaintext object with zstd at `level` (1..=22; 0 means zstd's default,
/// 3). Same as [`seal_for`] without a cipher.
///
/// When compression does not make the payload smaller (already-compressed data), the raw
/// bytes are stored with [`Codec::None`] instead. Panics if `raw` exceeds [`MAX_RAW_LEN`],
/// which readers would refuse.
pub fn seal(raw: &[u8], level: i32) -> Sealed {
    seal_for(raw, level, None, "")
}

/// Seals `raw` as [`seal`] does and, with a `cipher`, encrypted for the object stored under
/// `name` (its store key, e.g. `backups/<id>/manifest.json`): the header carries the keyed
/// hash and a fresh nonce, the payload is sealed with `name` and the header as associated
/// data. Without a cipher `name` is unused and the object is plaintext, byte for byte what
/// [`seal`] writes.
///
/// Panics if `raw` exceeds [`MAX_RAW_LEN`].
pub fn seal_for(raw: &[u8], level: i32, cipher: Option<&ObjectCipher>, name: &str) -> Sealed {
    let hash = hash_of(raw, cipher);
    build(raw, hash, level, cipher, name)
}

/// Seals a content-addressed object (a backup chunk) whose name depends on its hash:
/// computes the hash (keyed with a cipher), asks `name_of` for the name (e.g.
/// `|h| layout::chunk_key(&h.to_hex())`), and seals for that name as [`seal_for`] does.
/// Returns the name and the sealed object.
///
/// Panics if `raw` exceeds [`MAX_RAW_LEN`].
pub fn seal_chunk(
    raw: &[u8],
    level: i32,
    cipher: Option<&ObjectCipher>,
    name_of: impl FnOnce(&blake3::Hash) -> String,
) -> (String, Sealed) {
    let hash = hash_of(raw, cipher);
    let name = name_of(&hash);
    let sealed = build(raw, hash, level, cipher, &name);
    (name, sealed)
}

/// The hash an envelope of `raw` carries, and the name of a content-addressed object: blake3
/// of the raw bytes, keyed with the store's content hash key when `cipher` is set (so two
/// stores with different keys give the same chunk different names).
pub fn content_hash(raw: &[u8], cipher: Option<&ObjectCipher>) -> blake3::Hash {
    hash_of(raw, cipher)
}

fn hash_of(raw: &[u8], cipher: Option<&ObjectCipher>) -> blake3::Hash {
    match cipher {
        Some(c) => c.keyed_hash(raw),
        None => blake3::hash(raw),
    }
}

fn header_for(codec: Codec, raw_len: u64, hash: blake3::Hash, encrypted: bool) -> Header {
    Header {
        version: FORMAT_VERSION,
        codec,
        flags: if encrypted { FLAG_ENCRYPTED } else { 0 },
        raw_len,
        hash,
        nonce: encrypted.then(random_nonce),
    }
}

/// Encrypts `body[header.encoded_len()..]` in place and appends the tag.
fn seal_payload(body: &mut Vec<u8>, header: &Header, cipher: &ObjectCipher, name: &str) {
    debug_assert!(
        !name.is_empty(),
        "an encrypted object is sealed for its name"
    );
    let head_len = header.encoded_len();
    let nonce = header.nonce.expect("an encrypted header has a nonce");
    let ad = associated_data(name, &body[..head_len]);
    let tag = cipher
        .aead()
        .seal_in_place(&nonce, &ad, &mut body[head_len..]);
    body.extend_from_slice(&tag);
}

fn build(
    raw: &[u8],
    hash: blake3::Hash,
    level: i32,
    cipher: Option<&ObjectCipher>,
    name: &str,
) -> Sealed {
    assert!(
        raw.len() as u64 <= MAX_RAW_LEN,
        "object of {} bytes exceeds the envelope limit",
        raw.len()
    );
    let compressed = zstd::bulk::compress(raw, level).expect("zstd compression into memory");
    let (codec, payload): (Codec, &[u8]) = if compressed.len() < raw.len() {
        (Codec::Zstd, &compressed)
    } else {
        (Codec::None, raw)
    };
    let header = header_for(codec, raw.len() as u64, hash, cipher.is_some());
    let head = header.encode();
    let tag_len = if cipher.is_some() { TAG_LEN } else { 0 };
    let mut body = Vec::with_capacity(head.len() + payload.len() + tag_len);
    body.extend_from_slice(&head);
    body.extend_from_slice(payload);
    if let Some(c) = cipher {
        seal_payload(&mut body, &header, c, name);
    }
    Sealed {
        body: Bytes::from(body),
        hash,
        raw_len: raw.len() as u64,
    }
}

/// Streaming form of [`seal`] for large objects (WAL segments): reads `raw` in 1 MiB pieces,
/// hashing and compressing as it goes, so memory stays at the compressed size plus the
/// compressor's window instead of holding the raw bytes and a worst-case output buffer.
/// The payload is always a zstd frame (on incompressible input it is a few bytes larger than
/// the input, which [`seal`] would store raw instead). Same as [`seal_reader_for`] without a
/// cipher.
///
/// `size_hint` is the exact raw length when known (a staged segment's file size): zstd then
/// picks the parameters of a one-shot compression for that size and records it in the frame.
///
/// Errors: the reader's I/O errors, `InvalidData` past [`MAX_RAW_LEN`] bytes, or a reader that
/// yields a different length than `size_hint`.
pub fn seal_reader(raw: impl Read, size_hint: Option<u64>, level: i32) -> std::io::Result<Sealed> {
    seal_reader_for(raw, size_hint, level, None, "")
}

/// [`seal_reader`] with the store's `cipher` (`None`: plaintext) for the object stored under
/// `name`, as [`seal_for`] encrypts. The compressed frame is encrypted in place, so memory
/// stays at the compressed size; the raw bytes are never held.
///
/// Errors: as [`seal_reader`].
pub fn seal_reader_for(
    mut raw: impl Read,
    size_hint: Option<u64>,
    level: i32,
    cipher: Option<&ObjectCipher>,
    name: &str,
) -> std::io::Result<Sealed> {
    let head_len = if cipher.is_some() {
        ENCRYPTED_HEADER_LEN
    } else {
        HEADER_LEN
    };
    let mut body = Vec::with_capacity(head_len + (1 << 20));
    body.resize(head_len, 0);
    let mut encoder = zstd::stream::write::Encoder::new(body, level)?;
    encoder.set_pledged_src_size(size_hint)?;
    encoder.include_contentsize(size_hint.is_some())?;
    let mut hasher = match cipher {
        Some(c) => c.hasher(),
        None => blake3::Hasher::new(),
    };
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
    let header = header_for(Codec::Zstd, raw_len, hash, cipher.is_some());
    body[..head_len].copy_from_slice(&header.encode());
    if let Some(c) = cipher {
        body.reserve_exact(TAG_LEN);
        seal_payload(&mut body, &header, c, name);
    }
    body.shrink_to_fit();
    Ok(Sealed {
        body: Bytes::from(body),
        hash,
        raw_len,
    })
}
