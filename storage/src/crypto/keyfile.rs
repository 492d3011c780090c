//! The `keys/<id>` file format (see [`super::keys`] for the layout): its types and
//! constants, wrapping the master key under a passphrase, and checking and unwrapping a
//! file read from the bucket.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::kdf::{KdfParams, ARGON2_VERSION, SALT_LEN};
use super::{random_bytes, random_nonce, Aead, KeyError, MasterKey, Passphrase};
use super::{KEY_LEN, NONCE_LEN, TAG_LEN};
use crate::layout::key_file_key;

/// Key file format version written by this build.
pub const KEY_FORMAT_VERSION: u32 = 1;
/// Start of the associated data of the master key wrap (the id follows).
pub const WRAP_CONTEXT: &[u8] = b"pgagent keys/ master key wrap v1\0";
/// Length of a key id in hex digits (16 random bytes).
pub const KEY_ID_LEN: usize = 32;

/// Who made a key, recorded in its file for `pgagent key list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOrigin {
    /// Host name of the machine.
    pub hostname: String,
    /// OS user name of the process.
    pub username: String,
}

/// What `pgagent key list` shows of one key file: nothing secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// The id (`keys/<id>`).
    pub id: String,
    /// When the key was added, RFC 3339 UTC.
    pub created_at: String,
    /// Host it was added on.
    pub hostname: String,
    /// OS user that added it.
    pub username: String,
    /// Its Argon2id costs.
    pub kdf: KdfParams,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeyFile {
    format_version: u32,
    pub(crate) id: String,
    created_at: String,
    hostname: String,
    username: String,
    kdf: KdfSection,
    wrap: WrapSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KdfSection {
    algorithm: String,
    version: u32,
    #[serde(flatten)]
    params: KdfParams,
    salt: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WrapSection {
    algorithm: String,
    nonce: String,
    ciphertext: String,
}

fn associated_data(id: &str) -> Vec<u8> {
    [WRAP_CONTEXT, id.as_bytes()].concat()
}

pub(crate) fn new_id() -> String {
    let mut b = [0u8; KEY_ID_LEN / 2];
    random_bytes(&mut b);
    hex::encode(b)
}

pub(crate) fn is_key_id(id: &str) -> bool {
    id.len() == KEY_ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Wraps `master` under a key derived from `passphrase` (blocking: runs Argon2id).
pub(crate) fn wrap(
    master: &MasterKey,
    passphrase: &Passphrase,
    params: KdfParams,
    origin: &KeyOrigin,
) -> Result<KeyFile, KeyError> {
    let id = new_id();
    let mut salt = [0u8; SALT_LEN];
    random_bytes(&mut salt);
    let access = params
        .derive(passphrase, &salt)
        .map_err(|d| KeyError::corrupt(&key_file_key(&id), d))?;
    let nonce = random_nonce();
    let mut ct = Zeroizing::new(master.expose_bytes().to_vec());
    let tag = access_cipher(&access).seal_in_place(&nonce, &associated_data(&id), &mut ct);
    let mut sealed = ct.to_vec();
    sealed.extend_from_slice(&tag);
    Ok(KeyFile {
        format_version: KEY_FORMAT_VERSION,
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        hostname: origin.hostname.clone(),
        username: origin.username.clone(),
        kdf: KdfSection {
            algorithm: "argon2id".into(),
            version: ARGON2_VERSION,
            params,
            salt: hex::encode(salt),
        },
        wrap: WrapSection {
            algorithm: "xchacha20poly1305".into(),
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(sealed),
        },
        id,
    })
}

/// The AEAD of an access key: the same XChaCha20-Poly1305 as objects, keyed directly.
fn access_cipher(access: &[u8; KEY_LEN]) -> Aead {
    Aead::new(access)
}

/// Parses and checks a key file read from `key` (everything but the passphrase).
pub(crate) fn parse(key: &str, body: &[u8]) -> Result<KeyFile, KeyError> {
    let f: KeyFile = serde_json::from_slice(body)
        .map_err(|e| KeyError::corrupt(key, format!("not key file JSON: {e}")))?;
    if f.format_version != KEY_FORMAT_VERSION {
        return Err(KeyError::corrupt(
            key,
            format!(
                "key file format {} (this build reads {KEY_FORMAT_VERSION}; upgrade pgagent)",
                f.format_version
            ),
        ));
    }
    if key_file_key(&f.id) != key || !is_key_id(&f.id) {
        return Err(KeyError::corrupt(
            key,
            format!("its id {:?} is not its name", f.id),
        ));
    }
    if f.kdf.algorithm != "argon2id" || f.kdf.version != ARGON2_VERSION {
        return Err(KeyError::corrupt(
            key,
            format!(
                "kdf {} version {} (expected argon2id 19)",
                f.kdf.algorithm, f.kdf.version
            ),
        ));
    }
    f.kdf
        .params
        .check()
        .map_err(|d| KeyError::corrupt(key, d))?;
    if f.wrap.algorithm != "xchacha20poly1305" {
        return Err(KeyError::corrupt(key, format!("wrap {}", f.wrap.algorithm)));
    }
    let lens = (
        hex_len(&f.kdf.salt),
        hex_len(&f.wrap.nonce),
        hex_len(&f.wrap.ciphertext),
    );
    if lens != (Some(SALT_LEN), Some(NONCE_LEN), Some(KEY_LEN + TAG_LEN)) {
        return Err(KeyError::corrupt(
            key,
            "salt, nonce or wrapped key has the wrong length",
        ));
    }
    Ok(f)
}

fn hex_len(s: &str) -> Option<usize> {
    hex::decode(s).ok().map(|b| b.len())
}

/// Tries `passphrase` on a checked key file (blocking: runs Argon2id). `Ok(None)`: it does
/// not open this key.
pub(crate) fn unwrap(f: &KeyFile, passphrase: &Passphrase) -> Result<Option<MasterKey>, KeyError> {
    let key = key_file_key(&f.id);
    let decode = |s: &str| hex::decode(s).expect("checked by parse");
    let access = f
        .kdf
        .params
        .derive(passphrase, &decode(&f.kdf.salt))
        .map_err(|d| KeyError::corrupt(&key, d))?;
    let nonce: [u8; NONCE_LEN] = decode(&f.wrap.nonce).try_into().expect("checked");
    let sealed = decode(&f.wrap.ciphertext);
    let (ct, tag) = sealed.split_at(KEY_LEN);
    let mut buf: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(ct.try_into().expect("checked"));
    let tag: [u8; TAG_LEN] = tag.try_into().expect("checked");
    match access_cipher(&access).open_in_place(&nonce, &associated_data(&f.id), &mut buf[..], &tag)
    {
        Ok(()) => Ok(Some(MasterKey::from_bytes(&mut buf))),
        Err(()) => Ok(None),
    }
}

/// The Argon2 costs a checked key file asks for.
pub(crate) fn kdf_params(f: &KeyFile) -> KdfParams {
    f.kdf.params
}

pub(crate) fn info(f: &KeyFile) -> KeyInfo {
    KeyInfo {
        id: f.id.clone(),
        created_at: f.created_at.clone(),
        hostname: f.hostname.clone(),
        username: f.username.clone(),
        kdf: f.kdf.params,
    }
}
