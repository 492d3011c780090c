//! Passphrases from files and the environment (the store's, and the new one of `pgagent key
//! add`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pgagent_storage::crypto::Passphrase;

use super::ConfigError;

/// Reads a passphrase file: its bytes less one trailing newline (`\n` or `\r\n`, as editors
/// and `echo` leave one). Warns when every user may read the file.
///
/// Errors: the file cannot be read, or holds nothing but that newline; `setting` names where
/// the path came from.
pub fn read_passphrase_file(setting: &str, path: &Path) -> Result<Passphrase, ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError(format!(
            "{setting} is empty: give the passphrase file's path, or unset it"
        )));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError(format!("{setting} = {}: {e}", path.display())))?;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(
                file = %path.display(),
                "{setting}: every user of this machine can read the passphrase; \
                 chmod o-r (0600 or 0640) it"
            );
        }
    }
    passphrase_from_file_contents(bytes).ok_or_else(|| {
        ConfigError(format!(
            "{setting} = {}: the file is empty; an empty passphrase protects nothing",
            path.display()
        ))
    })
}

/// A passphrase given in the environment variable `var`, as is.
///
/// Errors: it is empty (an unset secret, not a passphrase).
pub fn passphrase_from_env(var: &str, value: &str) -> Result<Passphrase, ConfigError> {
    Passphrase::new(value).map_err(|_| {
        ConfigError(format!(
            "{var} is set but empty: an empty passphrase protects nothing (unset it for a \
             plaintext store)"
        ))
    })
}

/// The passphrase in a file's contents: less one trailing `\n` or `\r\n`; `None` if empty.
fn passphrase_from_file_contents(mut bytes: Vec<u8>) -> Option<Passphrase> {
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    Passphrase::new(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(b: &[u8]) -> Option<Vec<u8>> {
        passphrase_from_file_contents(b.to_vec()).map(|p| p.expose_bytes().to_vec())
    }

    #[test]
    fn one_trailing_newline_is_dropped() {
        assert_eq!(contents(b"s3cret\n").unwrap(), b"s3cret");
        assert_eq!(contents(b"s3cret\r\n").unwrap(), b"s3cret");
        assert_eq!(contents(b"s3cret").unwrap(), b"s3cret");
        assert_eq!(contents(b"s3cret\n\n").unwrap(), b"s3cret\n");
        assert_eq!(contents(b" spaces kept \n").unwrap(), b" spaces kept ");
        assert_eq!(contents(b"\xff\xfe binary\n").unwrap(), b"\xff\xfe binary");
        assert!(contents(b"").is_none());
        assert!(contents(b"\n").is_none());
        assert!(contents(b"\r\n").is_none());
    }

    #[test]
    fn files_are_read_and_problems_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pass");
        std::fs::write(&path, "correct horse\n").unwrap();
        let p = read_passphrase_file("encryption.passphrase_file", &path).unwrap();
        assert_eq!(p.expose_bytes(), b"correct horse");
        std::fs::write(&path, "\n").unwrap();
        let e = read_passphrase_file("encryption.passphrase_file", &path).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = read_passphrase_file("x", &dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let e = read_passphrase_file("x", Path::new("")).unwrap_err();
        assert!(e.to_string().contains("x is empty"), "{e}");
        assert!(passphrase_from_env("PGAGENT_NEW_PASSPHRASE", "").is_err());
        assert_eq!(passphrase_from_env("V", "p").unwrap().expose_bytes(), b"p");
    }
}
