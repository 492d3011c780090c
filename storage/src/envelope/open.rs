//! Reading envelopes: authenticate (encrypted), decode, and verify length and hash.

use std::io::{Read, Write};

use super::{associated_data, Codec, Header};
use crate::crypto::{ObjectCipher, TAG_LEN};
use crate::error::StoreError;

/// Opens a plaintext envelope and returns the verified raw bytes. Same as [`open_for`]
/// without a cipher and without a name.
///
/// Errors: [`StoreError::Corrupt`] (empty key; attach one with [`StoreError::with_key`]) on
/// any header problem (see [`Header::parse`]), an undecodable or trailing-garbage payload, a
/// decoded length different from the declared one, or a hash mismatch;
/// [`StoreError::Encrypted`] for an encrypted object. Never allocates more than the declared
/// raw length (itself capped at [`super::MAX_RAW_LEN`]).
pub fn open(body: &[u8]) -> Result<Vec<u8>, StoreError> {
    open_for(body, None, "")
}

/// Opens the envelope stored under `name` with the store's `cipher` (`None`: a plaintext
/// store) and returns the verified raw bytes.
///
/// Errors (with `name` as their key): as [`open`]; [`StoreError::Encrypted`] for an
/// encrypted object without a cipher, [`StoreError::NotEncrypted`] for a plaintext object
/// with one; [`StoreError::Corrupt`] when authentication fails (a byte changed anywhere,
/// the object sealed for another name, or with another store's key).
pub fn open_for(
    body: &[u8],
    cipher: Option<&ObjectCipher>,
    name: &str,
) -> Result<Vec<u8>, StoreError> {
    let header = Header::parse(body).map_err(|e| e.with_key(name))?;
    // Grow as data arrives rather than trusting the declared length for one allocation.
    let mut out = Vec::with_capacity(header.raw_len.min(64 << 20) as usize);
    open_into_for(body, cipher, name, &mut out)?;
    Ok(out)
}

/// A stored body taken as it is, to be put in another store of the same cluster (copies
/// are byte for byte, so every store holds the same object under the same name): the
/// body is verified in full first, so a corrupt copy is never spread.
///
/// Errors: as [`open_for`].
pub fn verify_stored(
    body: bytes::Bytes,
    cipher: Option<&ObjectCipher>,
    name: &str,
) -> Result<super::Sealed, StoreError> {
    let header = Header::parse(&body).map_err(|e| e.with_key(name))?;
    open_into_for(&body, cipher, name, &mut std::io::sink())?;
    Ok(super::Sealed {
        hash: header.hash,
        raw_len: header.raw_len,
        body,
    })
}

/// Streaming form of [`open`]: decodes into `out` and verifies at the end. Same as
/// [`open_into_for`] without a cipher and without a name.
///
/// Returns the raw length in bytes. Bytes reach `out` before the hash is checked, so on error
/// the caller must discard what was written (write to a temporary file and rename it only on
/// success). I/O errors of `out` are reported as [`StoreError::Other`].
pub fn open_into(body: &[u8], out: &mut impl Write) -> Result<u64, StoreError> {
    open_into_for(body, None, "", out)
}

/// Streaming form of [`open_for`]. An encrypted payload is authenticated as a whole before
/// any byte reaches `out` (it is decrypted into one buffer of the compressed size); the raw
/// bytes then stream into `out` and are verified at the end, as in [`open_into`].
///
/// Errors: as [`open_for`] and [`open_into`].
pub fn open_into_for(
    body: &[u8],
    cipher: Option<&ObjectCipher>,
    name: &str,
    out: &mut impl Write,
) -> Result<u64, StoreError> {
    let header = Header::parse(body).map_err(|e| e.with_key(name))?;
    let result = match (header.nonce, cipher) {
        (None, None) => decode_and_verify(
            &body[header.encoded_len()..],
            &header,
            blake3::Hasher::new(),
            out,
        ),
        (Some(_), None) => Err(StoreError::Encrypted {
            key: name.to_string(),
        }),
        (None, Some(_)) => Err(StoreError::NotEncrypted {
            key: name.to_string(),
        }),
        (Some(nonce), Some(c)) => {
            let head_len = header.encoded_len();
            let sealed = &body[head_len..];
            let Some(ct_len) = sealed.len().checked_sub(TAG_LEN) else {
                return Err(StoreError::corrupt(
                    name,
                    format!(
                        "encrypted payload is {} bytes, shorter than its {TAG_LEN}-byte tag",
                        sealed.len()
                    ),
                ));
            };
            let (ct, tag) = sealed.split_at(ct_len);
            let tag: [u8; TAG_LEN] = tag.try_into().expect("split at the tag");
            let mut payload = ct.to_vec();
            let ad = associated_data(name, &body[..head_len]);
            if c.aead()
                .open_in_place(&nonce, &ad, &mut payload, &tag)
                .is_err()
            {
                return Err(StoreError::corrupt(
                    name,
                    "authentication failed: the object was altered, is stored under another \
                     name than it was sealed for, or was sealed with another store's key",
                ));
            }
            decode_and_verify(&payload, &header, c.hasher(), out)
        }
    };
    result.map_err(|e| e.with_key(name))
}

/// Decodes `payload` per `header.codec` into `out`, hashing with `hasher` (plain or keyed),
/// and checks the length and hash against the header.
fn decode_and_verify(
    payload: &[u8],
    header: &Header,
    mut hasher: blake3::Hasher,
    out: &mut impl Write,
) -> Result<u64, StoreError> {
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
