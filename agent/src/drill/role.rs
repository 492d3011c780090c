//! The role a drill connects to its throwaway server as: `drill.user` when set, else the
//! restored cluster's bootstrap superuser (the role with oid 10, made by `initdb`), read
//! from the restored copy's own catalog before the server starts.
//!
//! Why the copy, not the live server or the OS user: the OS user's name is a role only by
//! chance (a drill run as `pgagent` or a drill user would log in as nothing, or as a role
//! that cannot run `pg_amcheck`), and the live server is often down when one restores, or
//! not reachable from where a bucket-only drill runs. The copy is always there.
//!
//! How: `global/pg_filenode.map` (`relmapper.c`: magic `0x592717`, a count, then
//! `(oid, filenode)` pairs) gives the file of `pg_authid` (oid 1260, a mapped catalog); its
//! heap pages (`bufpage.h`, `htup_details.h`) hold one tuple per role version, whose data
//! starts with `oid` (4 bytes) then `rolname` (`name`, 64 bytes), the layout of every
//! supported major (13 to 18). A version replaced by an update or deleted (its `xmax`
//! set) is passed over when a current one is there. A rename after the backup is not seen:
//! `drill.user` covers that.

use std::path::Path;

use anyhow::{bail, Context};

/// Oid of the bootstrap superuser (`BOOTSTRAP_SUPERUSERID`).
pub const BOOTSTRAP_SUPERUSER_OID: u32 = 10;
/// Oid of `pg_authid` (`AuthIdRelationId`).
const AUTHID_RELATION_OID: u32 = 1260;
/// `RELMAPPER_FILEMAGIC`.
const RELMAP_MAGIC: u32 = 0x0059_2717;
/// `SizeOfPageHeaderData`.
const PAGE_HEADER: usize = 24;
/// `LP_NORMAL`: a line pointer to a tuple.
const LP_NORMAL: u32 = 1;
/// `HEAP_XMIN_INVALID`: the inserting transaction aborted.
const HEAP_XMIN_INVALID: u16 = 0x0200;
/// `HEAP_XMAX_INVALID`: no transaction deleted or replaced the tuple.
const HEAP_XMAX_INVALID: u16 = 0x0800;
/// `HEAP_XMAX_LOCK_ONLY`: `xmax` only locked the tuple.
const HEAP_XMAX_LOCK_ONLY: u16 = 0x0080;
/// `NAMEDATALEN`.
const NAMEDATALEN: usize = 64;

/// Where the role to connect as comes from, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleSource {
    /// `drill.user`.
    Setting,
    /// The restored cluster's bootstrap superuser.
    BootstrapSuperuser,
}

/// The role to connect to the copy in `pgdata` as, and where it came from.
///
/// Errors: `drill.user` is empty and the copy's `pg_authid` cannot be read or holds no
/// role with oid 10.
pub fn drill_role(setting: &str, pgdata: &Path) -> anyhow::Result<(String, RoleSource)> {
    if !setting.is_empty() {
        return Ok((setting.to_string(), RoleSource::Setting));
    }
    let name = bootstrap_superuser(pgdata).with_context(|| {
        format!(
            "finding the bootstrap superuser of the restored cluster in {} (set drill.user \
             to a superuser role to connect as)",
            pgdata.display()
        )
    })?;
    Ok((name, RoleSource::BootstrapSuperuser))
}

/// The name of the role with oid 10 in the data directory `pgdata`.
///
/// Errors: the relation map or `pg_authid` cannot be read or parsed; no such role.
pub fn bootstrap_superuser(pgdata: &Path) -> anyhow::Result<String> {
    let global = pgdata.join("global");
    let map_path = global.join("pg_filenode.map");
    let map = std::fs::read(&map_path).with_context(|| format!("read {}", map_path.display()))?;
    let filenode = mapped_filenode(&map, AUTHID_RELATION_OID)
        .with_context(|| format!("{}: no entry for pg_authid", map_path.display()))?;
    let path = global.join(filenode.to_string());
    let heap = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    match role_name(&heap, BOOTSTRAP_SUPERUSER_OID) {
        Some(name) => Ok(name),
        None => bail!(
            "{} (pg_authid) holds no role with oid {BOOTSTRAP_SUPERUSER_OID}",
            path.display()
        ),
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The filenode `map` (a `pg_filenode.map`) gives relation `oid`.
pub fn mapped_filenode(map: &[u8], oid: u32) -> Option<u32> {
    if u32_at(map, 0)? != RELMAP_MAGIC {
        return None;
    }
    let count = usize::try_from(u32_at(map, 4)?).ok()?;
    (0..count).find_map(|i| {
        let at = 8 + i * 8;
        (u32_at(map, at)? == oid)
            .then(|| u32_at(map, at + 4))
            .flatten()
    })
}

/// The `rolname` of the role `oid` in `heap` (the pages of a `pg_authid` file): its
/// current version when one is marked so, else any version found.
pub fn role_name(heap: &[u8], oid: u32) -> Option<String> {
    // Each page says its size (`pd_pagesize_version`, high byte); 8 KiB by default.
    let page_size = u16_at(heap, 18).map_or(8192, |v| usize::from(v & 0xFF00));
    if page_size < PAGE_HEADER {
        return None;
    }
    let mut replaced = None;
    for page in heap.chunks_exact(page_size) {
        for (name, current) in page_tuples(page, oid) {
            if current {
                return Some(name);
            }
            replaced.get_or_insert(name);
        }
    }
    replaced
}

/// The names of the tuples of role `oid` in one heap page, each with whether it is the
/// current version (not replaced or deleted).
fn page_tuples(page: &[u8], oid: u32) -> Vec<(String, bool)> {
    let lower = u16_at(page, 12).map_or(0, usize::from);
    let mut found = Vec::new();
    let mut at = PAGE_HEADER;
    while at + 4 <= lower.min(page.len()) {
        let item = u32_at(page, at).unwrap_or(0);
        at += 4;
        let (off, flags, len) = (
            (item & 0x7FFF) as usize,
            (item >> 15) & 3,
            (item >> 17) as usize,
        );
        if flags != LP_NORMAL || off + len > page.len() || len < 23 {
            continue;
        }
        let tuple = &page[off..off + len];
        let (Some(xmax), Some(infomask)) = (u32_at(tuple, 4), u16_at(tuple, 20)) else {
            continue;
        };
        let data = usize::from(tuple[22]);
        if infomask & HEAP_XMIN_INVALID != 0 || u32_at(tuple, data) != Some(oid) {
            continue;
        }
        let Some(raw) = tuple.get(data + 4..data + 4 + NAMEDATALEN) else {
            continue;
        };
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let Ok(name) = std::str::from_utf8(&raw[..end]) else {
            continue;
        };
        let current =
            xmax == 0 || infomask & HEAP_XMAX_INVALID != 0 || infomask & HEAP_XMAX_LOCK_ONLY != 0;
        found.push((name.to_string(), current));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heap page of `size` bytes holding tuples `(oid, name, xmax)`.
    fn page(size: usize, tuples: &[(u32, &str, u32)]) -> Vec<u8> {
        let mut p = vec![0u8; size];
        let mut upper = size;
        for (i, (oid, name, xmax)) in tuples.iter().enumerate() {
            let hoff = 24usize;
            let len = hoff + 4 + NAMEDATALEN + 8;
            upper -= len;
            let t = &mut p[upper..upper + len];
            t[4..8].copy_from_slice(&xmax.to_le_bytes());
            let mask = if *xmax == 0 { HEAP_XMAX_INVALID } else { 0 };
            t[20..22].copy_from_slice(&mask.to_le_bytes());
            t[22] = hoff as u8;
            t[hoff..hoff + 4].copy_from_slice(&oid.to_le_bytes());
            t[hoff + 4..hoff + 4 + name.len()].copy_from_slice(name.as_bytes());
            let item = (upper as u32) | (LP_NORMAL << 15) | ((len as u32) << 17);
            p[24 + 4 * i..28 + 4 * i].copy_from_slice(&item.to_le_bytes());
        }
        let lower = (24 + 4 * tuples.len()) as u16;
        p[12..14].copy_from_slice(&lower.to_le_bytes());
        p[14..16].copy_from_slice(&(upper as u16).to_le_bytes());
        p[16..18].copy_from_slice(&(size as u16).to_le_bytes());
        p[18..20].copy_from_slice(&((size as u16 & 0xFF00) | 4).to_le_bytes());
        p
    }

    #[test]
    fn the_current_version_of_oid_10_is_found_on_any_page() {
        let mut heap = page(8192, &[(3373, "pg_monitor", 0), (10, "old_name", 742)]);
        heap.extend(page(8192, &[(16384, "pgagent", 0), (10, "admin", 0)]));
        assert_eq!(role_name(&heap, 10).as_deref(), Some("admin"));
        assert_eq!(role_name(&heap, 16384).as_deref(), Some("pgagent"));
        assert_eq!(role_name(&heap, 99), None);
        // Only a replaced version: still the best there is.
        let heap = page(8192, &[(10, "postgres", 900)]);
        assert_eq!(role_name(&heap, 10).as_deref(), Some("postgres"));
        // Another page size.
        let heap = page(16384, &[(10, "postgres", 0)]);
        assert_eq!(role_name(&heap, 10).as_deref(), Some("postgres"));
    }

    #[test]
    fn garbage_is_no_role() {
        assert_eq!(role_name(&[], 10), None);
        assert_eq!(role_name(&[0xFF; 8192], 10), None);
        assert_eq!(role_name(&[0; 100], 10), None);
    }

    #[test]
    fn the_relation_map_names_the_file() {
        let mut map = Vec::new();
        for v in [RELMAP_MAGIC, 2, 1262, 1262, 1260, 16999] {
            map.extend(v.to_le_bytes());
        }
        map.resize(512, 0);
        assert_eq!(mapped_filenode(&map, 1260), Some(16999));
        assert_eq!(mapped_filenode(&map, 1213), None);
        assert_eq!(mapped_filenode(&[0; 512], 1260), None);
    }

    #[test]
    fn drill_user_wins() {
        let (name, source) = drill_role("checker", Path::new("/nonexistent")).unwrap();
        assert_eq!((name.as_str(), source), ("checker", RoleSource::Setting));
        let e = drill_role("", Path::new("/nonexistent")).unwrap_err();
        assert!(format!("{e:#}").contains("drill.user"), "{e:#}");
    }
}
