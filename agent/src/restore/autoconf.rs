//! The recovery settings of a restored data directory, as text: one clean set in
//! `postgresql.auto.conf`, none carried in by the backup (DESIGN.md, "Invariants").
//!
//! A backup of a cluster that was itself restored holds the settings of that earlier
//! restore (`recovery_target_time`, `restore_command`…). PostgreSQL reads them like any
//! other, so left in place they stop the next recovery at the old target, or fetch WAL from
//! the old archive. [`rewrite_auto_conf`] drops them (and the comment lines earlier
//! restores wrote) from `postgresql.auto.conf` and appends this restore's settings;
//! [`disable_in_conf`] comments them out in `postgresql.conf`, which the user edits by hand.
//! Everything else — other settings, comments, lines PostgreSQL would refuse — stays as it
//! was. Both are pure; the caller writes the files.
//!
//! Lines are read as PostgreSQL's configuration lexer reads them
//! (`src/backend/utils/misc/guc-file.l`): `name = value` or `name value`, the `=` optional,
//! names case-insensitive (`guc_name_compare`), values unquoted or in single quotes with
//! `''` and backslash escapes, `#` starting a comment outside quotes; a setting never spans
//! lines.

/// The first words of the comment line each restore writes above its settings.
pub(super) const MARKER: &str = "# pgagent restore of ";

/// What [`disable_in_conf`] puts before a line it turns into a comment.
const DISABLED: &str = "# disabled by pgagent restore: ";

/// A configuration file line, as PostgreSQL's lexer reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Line {
    /// Blank, or only a comment.
    Empty,
    /// A setting (or an `include` directive): the name in lower case, the value unquoted.
    Setting {
        /// Lower-case name, e.g. `recovery_target_time`.
        name: String,
        /// The value with quotes and escapes resolved.
        value: String,
    },
    /// Something PostgreSQL would refuse to start with ("syntax error in file").
    Malformed,
}

/// Reads one line (without its newline).
pub(super) fn parse_line(line: &str) -> Line {
    let b = line.as_bytes();
    let mut i = skip_blanks(b, 0);
    if i == b.len() || b[i] == b'#' {
        return Line::Empty;
    }
    // The name: an identifier, or two joined by a dot. flex takes the longest token, so a
    // run that is only an unquoted string (`a-b`, `a.b.c`) is no name.
    let start = i;
    while i < b.len() && is_unquoted_char(b[i]) {
        i += 1;
    }
    let name = &line[start..i];
    let mut parts = name.split('.');
    let is_name = parts.next().is_some_and(is_identifier)
        && parts.next().is_none_or(is_identifier)
        && parts.next().is_none();
    if !is_name {
        return Line::Malformed;
    }
    i = skip_blanks(b, i);
    if i < b.len() && b[i] == b'=' {
        i = skip_blanks(b, i + 1);
    }
    let value = if i < b.len() && b[i] == b'\'' {
        match quoted(b, i) {
            Some((value, end)) => {
                i = end;
                value
            }
            None => return Line::Malformed,
        }
    } else {
        let start = i;
        while i < b.len() && (is_unquoted_char(b[i]) || b[i] == b'+') {
            i += 1;
        }
        if start == i {
            return Line::Malformed;
        }
        line[start..i].to_string()
    };
    i = skip_blanks(b, i);
    if i < b.len() && b[i] != b'#' {
        return Line::Malformed;
    }
    Line::Setting {
        name: name.to_ascii_lowercase(),
        value,
    }
}

/// Whether a setting decides where a recovery stops or where it reads WAL from: the
/// `recovery_target*` family (target, timeline, inclusive, action) and `restore_command`.
/// Standby settings (`primary_conninfo`, `primary_slot_name`) are not: an archive
/// recovery (`recovery.signal`) does not use them.
pub(super) fn is_recovery_setting(name: &str) -> bool {
    name.starts_with("recovery_target") || name == "restore_command"
}

/// A file's new content and the lines taken out of effect, as they were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rewritten {
    /// The new content: the bytes of every line kept, as they were (a configuration file
    /// need not be UTF-8).
    pub text: Vec<u8>,
    /// Recovery settings removed or commented out.
    pub removed: Vec<String>,
}

/// Whether `line` is blank.
fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// The recovery setting `line` (with or without its newline) holds, if it holds one, as
/// text for messages.
fn recovery_setting(line: &[u8]) -> Option<String> {
    let line = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(line));
    match parse_line(&line) {
        Line::Setting { name, .. } if is_recovery_setting(&name) => Some(line.trim().to_string()),
        _ => None,
    }
}

/// `postgresql.auto.conf` for a restore: `existing` without recovery settings and without the
/// comment lines of earlier restores (and the blank lines before them, and at the end), then
/// a blank line, `header` (a comment starting with [`MARKER`]) and `settings`, one per line.
pub(super) fn rewrite_auto_conf(existing: &[u8], header: &str, settings: &[String]) -> Rewritten {
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut removed = Vec::new();
    for line in existing.split(|b| *b == b'\n') {
        if line.trim_ascii_start().starts_with(MARKER.as_bytes()) {
            // With the blank line written before it.
            while kept.last().is_some_and(|l| is_blank(l)) {
                kept.pop();
            }
            continue;
        }
        match recovery_setting(line) {
            Some(setting) => removed.push(setting),
            None => kept.push(line),
        }
    }
    while kept.last().is_some_and(|l| is_blank(l)) {
        kept.pop();
    }
    let mut text = Vec::with_capacity(existing.len() + 512);
    for line in &kept {
        text.extend_from_slice(line);
        text.push(b'\n');
    }
    if !text.is_empty() {
        text.push(b'\n');
    }
    for line in std::iter::once(header).chain(settings.iter().map(String::as_str)) {
        text.extend_from_slice(line.as_bytes());
        text.push(b'\n');
    }
    Rewritten { text, removed }
}

/// `postgresql.conf` for a restore: each recovery setting in `existing` turned into a comment
/// that says so (the file is the user's; nothing is deleted). `None` when it holds none.
pub(super) fn disable_in_conf(existing: &[u8]) -> Option<Rewritten> {
    let mut text = Vec::with_capacity(existing.len() + 128);
    let mut removed = Vec::new();
    for line in existing.split_inclusive(|b| *b == b'\n') {
        if let Some(setting) = recovery_setting(line) {
            removed.push(setting);
            text.extend_from_slice(DISABLED.as_bytes());
        }
        text.extend_from_slice(line);
    }
    (!removed.is_empty()).then_some(Rewritten { text, removed })
}

/// A configuration string literal: `'…'` with `'` doubled.
pub(super) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn skip_blanks(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\r') {
        i += 1;
    }
    i
}

/// `LETTER` of guc-file.l: `[A-Za-z_\200-\377]`.
fn is_letter(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

/// `{LETTER}{LETTER_OR_DIGIT}*`.
fn is_identifier(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(is_letter) && b.all(|c| is_letter(c) || c.is_ascii_digit())
}

/// Characters of an unquoted value (`UNQUOTED_STRING`, `INTEGER`, `REAL` of guc-file.l; the
/// sign `+` is added by the caller for values).
fn is_unquoted_char(c: u8) -> bool {
    is_letter(c) || c.is_ascii_digit() || matches!(c, b'-' | b'.' | b':' | b'/')
}

/// The quoted string starting at `b[start] == '\''`, unescaped as `DeescapeQuotedString`
/// does (`''`, `\b \f \n \r \t`, octal `\ooo`, `\x` for any other `x`), and the index after
/// its closing quote; `None` when it is not closed on this line.
fn quoted(b: &[u8], start: usize) -> Option<(String, usize)> {
    let mut out = Vec::new();
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\'' if b.get(i + 1) == Some(&b'\'') => {
                out.push(b'\'');
                i += 2;
            }
            b'\'' => return Some((String::from_utf8_lossy(&out).into_owned(), i + 1)),
            b'\\' if i + 1 < b.len() => {
                let c = b[i + 1];
                i += 2;
                match c {
                    b'b' => out.push(0x08),
                    b'f' => out.push(0x0c),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'0'..=b'7' => {
                        let mut v = u32::from(c - b'0');
                        for _ in 0..2 {
                            match b.get(i) {
                                Some(d @ b'0'..=b'7') => {
                                    v = v * 8 + u32::from(d - b'0');
                                    i += 1;
                                }
                                _ => break,
                            }
                        }
                        out.push(v as u8);
                    }
                    other => out.push(other),
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(name: &str, value: &str) -> Line {
        Line::Setting {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn lines_are_read_as_postgres_reads_them() {
        for (line, expected) in [
            ("", Line::Empty),
            ("   \t", Line::Empty),
            ("# recovery_target_time = 'x'", Line::Empty),
            ("  #x", Line::Empty),
            ("work_mem = 64MB", setting("work_mem", "64MB")),
            ("work_mem=64MB", setting("work_mem", "64MB")),
            ("work_mem 64MB", setting("work_mem", "64MB")),
            (
                "Recovery_Target_TIME = 'x'",
                setting("recovery_target_time", "x"),
            ),
            (
                "\trestore_command='cp /a/%f \"%p\"' # from the runbook",
                setting("restore_command", "cp /a/%f \"%p\""),
            ),
            (
                "recovery_target_name = 'it''s # here'",
                setting("recovery_target_name", "it's # here"),
            ),
            (
                "recovery_target_name = 'a\\'b'",
                setting("recovery_target_name", "a'b"),
            ),
            (
                "recovery_target_name = 'tab\\there'",
                setting("recovery_target_name", "tab\there"),
            ),
            (
                "recovery_target_name = '\\101'",
                setting("recovery_target_name", "A"),
            ),
            (
                "recovery_target_inclusive off",
                setting("recovery_target_inclusive", "off"),
            ),
            (
                "recovery_target_lsn = 0/3000060",
                setting("recovery_target_lsn", "0/3000060"),
            ),
            (
                "recovery_min_apply_delay = -1",
                setting("recovery_min_apply_delay", "-1"),
            ),
            ("seq_page_cost = +1.5e0", setting("seq_page_cost", "+1.5e0")),
            (
                "pg_stat_statements.max = 10000",
                setting("pg_stat_statements.max", "10000"),
            ),
            ("include_dir 'conf.d'", setting("include_dir", "conf.d")),
            (
                "recovery_target_time = '2026-11-30 05:37:48",
                Line::Malformed,
            ),
            ("recovery_target_time =", Line::Malformed),
            ("recovery-target = 'x'", Line::Malformed),
            ("a.b.c = 1", Line::Malformed),
            ("9lives = 1", Line::Malformed),
            ("work_mem = 64MB extra", Line::Malformed),
        ] {
            assert_eq!(parse_line(line), expected, "{line:?}");
        }
    }

    #[test]
    fn only_targets_and_restore_command_are_recovery_settings() {
        for name in [
            "recovery_target",
            "recovery_target_time",
            "recovery_target_xid",
            "recovery_target_name",
            "recovery_target_lsn",
            "recovery_target_timeline",
            "recovery_target_inclusive",
            "recovery_target_action",
            "restore_command",
        ] {
            assert!(is_recovery_setting(name), "{name}");
        }
        for name in [
            "primary_conninfo",
            "primary_slot_name",
            "recovery_end_command",
            "archive_command",
            "recovery_min_apply_delay",
        ] {
            assert!(!is_recovery_setting(name), "{name}");
        }
    }

    /// What a backup of a restored cluster carries: ALTER SYSTEM's header, a user setting,
    /// and the settings and comment of the earlier restore.
    const CARRIED: &str = "\
# Do not edit this file manually!
# It will be overwritten by the ALTER SYSTEM command.
work_mem = '64MB'

# pgagent restore of backup 20261121T030000Z (time 2026-11-21 10:54:32.000000+00)
restore_command = '/usr/bin/pgagent fetch %f %p'
recovery_target_timeline = 'latest'
RECOVERY_TARGET_TIME = '2026-11-21 10:54:32.000000+00'
recovery_target_action = 'promote'
recovery_target_inclusive off   # by hand
primary_conninfo = 'host=a'
";

    #[test]
    fn a_restore_leaves_one_clean_set_of_settings() {
        let header = format!("{MARKER}backup B2 (the end of the WAL in the store)");
        let ours = vec![
            "restore_command = 'pgagent fetch %f %p'".to_string(),
            "recovery_target_timeline = 'latest'".to_string(),
        ];
        let r = rewrite_auto_conf(CARRIED.as_bytes(), &header, &ours);
        assert_eq!(
            String::from_utf8(r.text.clone()).unwrap(),
            "\
# Do not edit this file manually!
# It will be overwritten by the ALTER SYSTEM command.
work_mem = '64MB'
primary_conninfo = 'host=a'

# pgagent restore of backup B2 (the end of the WAL in the store)
restore_command = 'pgagent fetch %f %p'
recovery_target_timeline = 'latest'
"
        );
        assert_eq!(
            r.removed,
            [
                "restore_command = '/usr/bin/pgagent fetch %f %p'",
                "recovery_target_timeline = 'latest'",
                "RECOVERY_TARGET_TIME = '2026-11-21 10:54:32.000000+00'",
                "recovery_target_action = 'promote'",
                "recovery_target_inclusive off   # by hand",
            ]
        );
        // A restore of that restore: the same text, nothing piles up.
        let again = rewrite_auto_conf(&r.text, &header, &ours);
        assert_eq!(again.text, r.text);
        assert_eq!(again.removed.len(), 2);
        let recovery_lines = |text: &[u8]| {
            text.split(|b| *b == b'\n')
                .filter(|l| recovery_setting(l).is_some())
                .count()
        };
        assert_eq!(recovery_lines(&again.text), ours.len());
    }

    #[test]
    fn an_empty_or_missing_file_gets_the_settings_alone() {
        let r = rewrite_auto_conf(
            b"",
            "# pgagent restore of x",
            &["restore_command = 'c'".into()],
        );
        assert_eq!(r.text, b"# pgagent restore of x\nrestore_command = 'c'\n");
        assert!(r.removed.is_empty());
    }

    #[test]
    fn bytes_that_are_not_utf8_are_kept_as_they_were() {
        // A Latin-1 comment and value, as an old installation may have them.
        let conf =
            b"# r\xe9sum\xe9\nlc_messages = 'fran\xe7ais'\nrecovery_target_name = 'caf\xe9'\n";
        let r = rewrite_auto_conf(conf, "# pgagent restore of x", &[]);
        assert_eq!(
            r.text,
            b"# r\xe9sum\xe9\nlc_messages = 'fran\xe7ais'\n\n# pgagent restore of x\n"
        );
        assert_eq!(r.removed, ["recovery_target_name = 'caf\u{fffd}'"]);
        let r = disable_in_conf(conf).unwrap();
        assert_eq!(
            r.text,
            b"# r\xe9sum\xe9\nlc_messages = 'fran\xe7ais'\n# disabled by pgagent restore: recovery_target_name = 'caf\xe9'\n"
        );
    }

    #[test]
    fn postgresql_conf_keeps_its_lines_as_comments() {
        let conf = b"port = 5433\r\nrestore_command = 'cp /a/%f %p'\r\n#recovery_target_time = 'x'\nrecovery_target_xid 1234";
        let r = disable_in_conf(conf).unwrap();
        assert_eq!(
            String::from_utf8(r.text.clone()).unwrap(),
            "port = 5433\r\n# disabled by pgagent restore: restore_command = 'cp /a/%f %p'\r\n#recovery_target_time = 'x'\n# disabled by pgagent restore: recovery_target_xid 1234"
        );
        assert_eq!(
            r.removed,
            [
                "restore_command = 'cp /a/%f %p'",
                "recovery_target_xid 1234"
            ]
        );
        assert_eq!(disable_in_conf(&r.text), None);
        assert_eq!(disable_in_conf(b"port = 5433\n"), None);
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(
            parse_line(&format!("x = {}", quote("a''b'"))),
            setting("x", "a''b'")
        );
    }
}
