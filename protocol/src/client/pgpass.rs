//! The password file (`~/.pgpass`, `PGPASSFILE`).
//!
//! Format from the PostgreSQL documentation, "The Password File", and
//! `passwordFromFile` in `src/interfaces/libpq/fe-connect.c`: one
//! `hostname:port:database:username:password` entry per line, `*` matches
//! anything in the first four fields, `\` escapes `:` and `\`, lines starting
//! with `#` are comments, and the first matching line wins. The file is
//! ignored when it is not a plain file or is group or world accessible.

use std::path::Path;

/// What the password file is searched for.
#[derive(Clone, Copy, Debug)]
pub struct PgPassQuery<'a> {
    /// Host name, socket directory, or `localhost` for the default socket directory.
    pub host: &'a str,
    /// Port number as text.
    pub port: &'a str,
    /// Database name; `replication` for a physical replication connection.
    pub database: &'a str,
    /// Role name.
    pub user: &'a str,
}

/// Splits a line into its fields, undoing `\` escapes. Returns `None` for a
/// line with fewer than five fields.
fn fields(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::with_capacity(5);
    let mut cur = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ':' if out.len() < 4 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    (out.len() == 5).then_some(out)
}

/// Finds the password for `query` in the content of a password file.
pub fn lookup(content: &str, query: &PgPassQuery<'_>) -> Option<String> {
    let wanted = [query.host, query.port, query.database, query.user];
    content
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(fields)
        .find(|f| {
            f.iter()
                .zip(wanted)
                .all(|(have, want)| have == "*" || have == want)
        })
        .map(|mut f| f.swap_remove(4))
}

/// Reads `path` and looks `query` up, as libpq does: a missing file is no
/// password; a file that is not a plain file or has any group/other
/// permission bit set is ignored with a warning.
pub fn lookup_file(path: &Path, query: &PgPassQuery<'_>) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;

    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!(path = %path.display(), "password file is not a plain file; ignored");
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "password file has group or world access; permissions should be u=rw (0600) or less; ignored"
        );
        return None;
    }
    let content = std::fs::read_to_string(path).ok()?;
    lookup(&content, query)
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: PgPassQuery<'static> = PgPassQuery {
        host: "db.example",
        port: "5432",
        database: "replication",
        user: "pgagent",
    };

    #[test]
    fn first_match_wins() {
        let file = "# comment\n\
                    other:5432:*:pgagent:nope\n\
                    db.example:5433:*:pgagent:wrongport\n\
                    db.example:*:replication:pgagent:s3cr:t\n\
                    *:*:*:*:fallback\n";
        assert_eq!(lookup(file, &Q).as_deref(), Some("s3cr:t"));
        let q = PgPassQuery {
            user: "someone",
            ..Q
        };
        assert_eq!(lookup(file, &q).as_deref(), Some("fallback"));
    }

    #[test]
    fn escapes() {
        let file = "db\\:example:5432:*:*:a\\:b\\\\c\n";
        let q = PgPassQuery {
            host: "db:example",
            ..Q
        };
        assert_eq!(lookup(file, &q).as_deref(), Some("a:b\\c"));
        assert_eq!(lookup(file, &Q), None);
    }

    #[test]
    fn short_lines_and_crlf() {
        assert_eq!(lookup("db.example:5432:replication:pgagent\n", &Q), None);
        assert_eq!(lookup("*:*:*:*:pw\r\n", &Q).as_deref(), Some("pw"));
        assert_eq!(lookup("", &Q), None);
    }

    #[test]
    fn file_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "*:*:*:*:pw\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup_file(&path, &Q).as_deref(), Some("pw"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(lookup_file(&path, &Q), None);
        assert_eq!(lookup_file(&dir.path().join("missing"), &Q), None);
        assert_eq!(lookup_file(dir.path(), &Q), None);
    }
}
