//! The `INCREMENTAL.<relfile>` files of an incremental base backup.
//!
//! Reference: `src/backend/backup/basebackup_incremental.c` (what the server
//! sends, `GetIncrementalHeaderSize`, `GetIncrementalFileSize`) and
//! `src/bin/pg_combinebackup/reconstruct.c` (`make_incremental_rfile`,
//! `find_reconstructed_block_length`), PostgreSQL 17 and later.
//!
//! Asked for `BASE_BACKUP ( INCREMENTAL )`, the server sends each segment
//! file of a relation whose changed blocks it knows from its WAL summaries
//! as `INCREMENTAL.<name>` beside where `<name>` would be (`base/5/16384.1`
//! becomes `base/5/INCREMENTAL.16384.1`), holding only the blocks changed
//! since the parent backup. Every other file comes whole. The file, in the
//! server's byte order (little-endian on every platform PostgreSQL runs
//! backups from in practice; a big-endian file is refused by its magic):
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | magic [`INCREMENTAL_MAGIC`] |
//! | 4 | `num_blocks`: blocks included, at most `RELSEG_SIZE` |
//! | 4 | `truncation_block_length`: the segment's length in blocks as the parent must be cut to (blocks at or past it are new or zero), at most `RELSEG_SIZE` |
//! | 4 × `num_blocks` | the included blocks' numbers relative to the segment |
//! | padding | zeros up to a multiple of `BLCKSZ`, only when `num_blocks > 0` |
//! | `BLCKSZ` × `num_blocks` | the blocks, in the order of their numbers above |

use std::fmt;

/// The first four bytes of an incremental file (`INCREMENTAL_MAGIC` in
/// `src/include/backup/basebackup_incremental.h`).
pub const INCREMENTAL_MAGIC: u32 = 0xd3ae_1f0d;

/// The prefix the server gives an incremental file's name.
pub const INCREMENTAL_PREFIX: &str = "INCREMENTAL.";

/// Bytes of the fixed part of the header: magic, block count, truncation length.
pub const FIXED_HEADER_BYTES: usize = 12;

/// The page size and segment size a cluster was built with (`SHOW
/// block_size`, `SHOW segment_size`); the defaults are 8192 bytes and
/// 131072 blocks (1 GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockGeometry {
    /// `BLCKSZ`, bytes.
    pub block_size: u32,
    /// `RELSEG_SIZE`, blocks per segment file.
    pub segment_blocks: u32,
}

impl Default for BlockGeometry {
    fn default() -> Self {
        BlockGeometry {
            block_size: 8192,
            segment_blocks: 131_072,
        }
    }
}

/// The header of an incremental file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncrementalHeader {
    /// The segment's length, in blocks, as of the backup: blocks at or past it
    /// that the file does not hold were truncated away (and must not be taken
    /// from an older backup).
    pub truncation_block_length: u32,
    /// The numbers (relative to the segment) of the blocks the file holds, in
    /// file order.
    pub blocks: Vec<u32>,
    /// Bytes before the first block: fixed part, block numbers, padding.
    pub header_len: u64,
}

/// An incremental file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncrementalError {
    /// Fewer bytes than the header needs; at least `need` are.
    Incomplete {
        /// Bytes the header needs so far (it may need more once its block
        /// count is known).
        need: usize,
    },
    /// The first four bytes are not [`INCREMENTAL_MAGIC`].
    BadMagic(u32),
    /// A block count or truncation length past the segment size, or a block
    /// number out of the segment.
    OutOfRange(String),
    /// A file whose length is not header plus its blocks.
    BadLength {
        /// Length the header implies.
        expected: u64,
        /// Length found.
        found: u64,
    },
}

impl fmt::Display for IncrementalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IncrementalError::Incomplete { need } => {
                write!(
                    f,
                    "incremental file header is cut short (needs {need} bytes)"
                )
            }
            IncrementalError::BadMagic(m) => write!(
                f,
                "bad incremental magic number 0x{m:08x}, expected 0x{INCREMENTAL_MAGIC:08x}"
            ),
            IncrementalError::OutOfRange(why) => write!(f, "incremental file header: {why}"),
            IncrementalError::BadLength { expected, found } => write!(
                f,
                "incremental file is {found} bytes long; its header says {expected}"
            ),
        }
    }
}

impl std::error::Error for IncrementalError {}

/// The file name without [`INCREMENTAL_PREFIX`] when `name` (the last
/// component of a path) is an incremental file's: `INCREMENTAL.16384.1` →
/// `16384.1`.
pub fn bare_name(name: &str) -> Option<&str> {
    name.strip_prefix(INCREMENTAL_PREFIX)
        .filter(|bare| !bare.is_empty())
}

/// For a backup path (`base/5/INCREMENTAL.16384`), the path of the file it
/// stands for (`base/5/16384`); `None` for any other path.
pub fn full_path(path: &str) -> Option<String> {
    let (dir, name) = match path.rsplit_once('/') {
        Some((dir, name)) => (Some(dir), name),
        None => (None, path),
    };
    let bare = bare_name(name)?;
    Some(match dir {
        Some(dir) => format!("{dir}/{bare}"),
        None => bare.to_string(),
    })
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

impl IncrementalHeader {
    /// Reads the header from the start of an incremental file. `buf` may hold
    /// more than the header (the blocks), or just the header.
    ///
    /// Errors: [`IncrementalError::Incomplete`] when `buf` is shorter than the
    /// header; [`IncrementalError::BadMagic`]; [`IncrementalError::OutOfRange`]
    /// for a count, length or block number past `geometry.segment_blocks`.
    pub fn parse(buf: &[u8], geometry: BlockGeometry) -> Result<Self, IncrementalError> {
        if buf.len() < FIXED_HEADER_BYTES {
            return Err(IncrementalError::Incomplete {
                need: FIXED_HEADER_BYTES,
            });
        }
        let magic = u32_at(buf, 0);
        if magic != INCREMENTAL_MAGIC {
            return Err(IncrementalError::BadMagic(magic));
        }
        let count = u32_at(buf, 4);
        let truncation_block_length = u32_at(buf, 8);
        let segment = geometry.segment_blocks;
        if count > segment {
            return Err(IncrementalError::OutOfRange(format!(
                "block count {count} in excess of segment size {segment}"
            )));
        }
        if truncation_block_length > segment {
            return Err(IncrementalError::OutOfRange(format!(
                "truncation block length {truncation_block_length} in excess of segment size {segment}"
            )));
        }
        let numbers_end = FIXED_HEADER_BYTES + 4 * count as usize;
        if buf.len() < numbers_end {
            return Err(IncrementalError::Incomplete { need: numbers_end });
        }
        let blocks: Vec<u32> = (0..count as usize)
            .map(|i| u32_at(buf, FIXED_HEADER_BYTES + 4 * i))
            .collect();
        if let Some(b) = blocks.iter().find(|&&b| b >= segment) {
            return Err(IncrementalError::OutOfRange(format!(
                "block number {b} is outside a segment of {segment} blocks"
            )));
        }
        Ok(IncrementalHeader {
            truncation_block_length,
            header_len: header_len(count, geometry.block_size),
            blocks,
        })
    }

    /// Bytes the whole file must have: header plus one block per number.
    pub fn file_len(&self, block_size: u32) -> u64 {
        self.header_len + self.blocks.len() as u64 * u64::from(block_size)
    }

    /// Checks that a file of `len` bytes holds exactly the header and its
    /// blocks.
    ///
    /// Errors: [`IncrementalError::BadLength`].
    pub fn check_len(&self, len: u64, block_size: u32) -> Result<(), IncrementalError> {
        let expected = self.file_len(block_size);
        if len == expected {
            Ok(())
        } else {
            Err(IncrementalError::BadLength {
                expected,
                found: len,
            })
        }
    }

    /// Byte offset in the file of the `i`-th block it holds.
    pub fn block_offset(&self, i: usize, block_size: u32) -> u64 {
        self.header_len + i as u64 * u64::from(block_size)
    }

    /// Blocks of the file rebuilt from this one and its ancestors: the
    /// truncation length, extended to hold every block this file carries
    /// (`find_reconstructed_block_length`).
    pub fn reconstructed_blocks(&self) -> u32 {
        self.blocks
            .iter()
            .map(|b| b + 1)
            .fold(self.truncation_block_length, u32::max)
    }
}

/// The header length for `count` blocks: the fixed part and the numbers,
/// rounded up to a whole block when any block follows
/// (`GetIncrementalHeaderSize`).
pub fn header_len(count: u32, block_size: u32) -> u64 {
    let raw = FIXED_HEADER_BYTES as u64 + 4 * u64::from(count);
    let block = u64::from(block_size);
    if count == 0 {
        raw
    } else {
        raw.div_ceil(block) * block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: BlockGeometry = BlockGeometry {
        block_size: 8192,
        segment_blocks: 131_072,
    };

    fn file(count: u32, truncation: u32, blocks: &[u32]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&INCREMENTAL_MAGIC.to_le_bytes());
        v.extend_from_slice(&count.to_le_bytes());
        v.extend_from_slice(&truncation.to_le_bytes());
        for b in blocks {
            v.extend_from_slice(&b.to_le_bytes());
        }
        v
    }

    #[test]
    fn names() {
        assert_eq!(bare_name("INCREMENTAL.16384.1"), Some("16384.1"));
        assert_eq!(bare_name("INCREMENTAL."), None);
        assert_eq!(bare_name("16384"), None);
        assert_eq!(
            full_path("base/5/INCREMENTAL.16384_vm").as_deref(),
            Some("base/5/16384_vm")
        );
        assert_eq!(full_path("INCREMENTAL.x").as_deref(), Some("x"));
        assert_eq!(full_path("base/5/16384"), None);
        assert_eq!(full_path("base/INCREMENTAL.5/16384"), None);
    }

    #[test]
    fn a_header_without_blocks_has_no_padding() {
        let h = IncrementalHeader::parse(&file(0, 7, &[]), G).unwrap();
        assert_eq!(h.truncation_block_length, 7);
        assert!(h.blocks.is_empty());
        assert_eq!(h.header_len, 12);
        assert_eq!(h.file_len(8192), 12);
        assert_eq!(h.reconstructed_blocks(), 7);
        h.check_len(12, 8192).unwrap();
    }

    #[test]
    fn blocks_start_at_a_block_boundary_and_extend_the_length() {
        let h = IncrementalHeader::parse(&file(2, 3, &[1, 9]), G).unwrap();
        assert_eq!(h.blocks, vec![1, 9]);
        assert_eq!(h.header_len, 8192);
        assert_eq!(h.block_offset(1, 8192), 16384);
        assert_eq!(h.file_len(8192), 3 * 8192);
        assert_eq!(h.reconstructed_blocks(), 10);
        assert_eq!(
            h.check_len(3 * 8192 - 1, 8192),
            Err(IncrementalError::BadLength {
                expected: 3 * 8192,
                found: 3 * 8192 - 1
            })
        );
        // 2045 numbers fill the first block exactly; one more spills into a second.
        assert_eq!(header_len(2045, 8192), 8192);
        assert_eq!(header_len(2046, 8192), 16384);
    }

    #[test]
    fn damaged_headers_are_refused() {
        let mut bad = file(0, 0, &[]);
        bad[0] ^= 1;
        assert!(matches!(
            IncrementalHeader::parse(&bad, G),
            Err(IncrementalError::BadMagic(_))
        ));
        // Big-endian bytes do not pass for the magic.
        let mut swapped = file(0, 0, &[]);
        swapped[..4].copy_from_slice(&INCREMENTAL_MAGIC.to_be_bytes());
        assert!(IncrementalHeader::parse(&swapped, G).is_err());
        assert_eq!(
            IncrementalHeader::parse(&file(0, 0, &[])[..11], G),
            Err(IncrementalError::Incomplete { need: 12 })
        );
        assert_eq!(
            IncrementalHeader::parse(&file(3, 0, &[1, 2]), G),
            Err(IncrementalError::Incomplete { need: 24 })
        );
        for f in [
            file(131_073, 0, &[]),
            file(0, 131_073, &[]),
            file(1, 0, &[131_072]),
        ] {
            let e = IncrementalHeader::parse(&f, G).unwrap_err();
            assert!(matches!(e, IncrementalError::OutOfRange(_)), "{e}");
        }
    }
}
