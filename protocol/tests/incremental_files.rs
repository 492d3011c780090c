//! The `INCREMENTAL.<relfile>` header parser on files PostgreSQL 17 and 18 sent
//! (`pg_basebackup --incremental`; `tests/fixtures/incremental/`):
//!
//! - `pg17-INCREMENTAL.16384`: a six-block table of which rows in blocks 0 and 4 were
//!   updated after the full backup;
//! - `pg18-INCREMENTAL.1249`: `pg_attribute`, one block changed;
//! - `pg18-INCREMENTAL.16389`: a table left alone: a header and no block.

use pgagent_protocol::incremental::{BlockGeometry, IncrementalHeader};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/incremental/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Checks that `page` looks like a heap page: `pd_lower`, `pd_upper` and `pd_special`
/// (`PageHeaderData`, `src/include/storage/bufpage.h`) in order within the block.
fn assert_page(page: &[u8]) {
    let u16_at = |at: usize| u16::from_le_bytes([page[at], page[at + 1]]) as usize;
    let (lower, upper, special) = (u16_at(12), u16_at(14), u16_at(16));
    assert!(
        24 <= lower && lower <= upper && upper <= special && special <= page.len(),
        "not a page: lower {lower}, upper {upper}, special {special}"
    );
}

fn check(name: &str, blocks: &[u32], truncation: u32) {
    let bytes = fixture(name);
    let g = BlockGeometry::default();
    let h = IncrementalHeader::parse(&bytes, g).unwrap();
    assert_eq!(h.blocks, blocks, "{name}");
    assert_eq!(h.truncation_block_length, truncation, "{name}");
    h.check_len(bytes.len() as u64, g.block_size).unwrap();
    for i in 0..h.blocks.len() {
        let at = h.block_offset(i, g.block_size) as usize;
        assert_page(&bytes[at..at + g.block_size as usize]);
    }
    // Cut anywhere inside the header, the file is incomplete, never misread.
    for cut in [0, 11, h.header_len.min(bytes.len() as u64) as usize / 2] {
        if cut < 12 + 4 * blocks.len() {
            assert!(
                IncrementalHeader::parse(&bytes[..cut], g).is_err(),
                "{name} cut at {cut}"
            );
        }
    }
}

#[test]
fn postgresql_17_sends_the_changed_blocks_after_a_padded_header() {
    check("pg17-INCREMENTAL.16384", &[0, 4], 6);
    let bytes = fixture("pg17-INCREMENTAL.16384");
    assert_eq!(bytes.len(), 3 * 8192);
    assert_eq!(
        IncrementalHeader::parse(&bytes, BlockGeometry::default())
            .unwrap()
            .reconstructed_blocks(),
        6
    );
}

#[test]
fn postgresql_18_sends_the_same_format() {
    check("pg18-INCREMENTAL.1249", &[16], 56);
    check("pg18-INCREMENTAL.16389", &[], 5);
    assert_eq!(fixture("pg18-INCREMENTAL.16389").len(), 12);
}
