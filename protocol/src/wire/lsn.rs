//! Log sequence numbers.
//!
//! An LSN is a byte position in the WAL stream (`XLogRecPtr` in
//! `src/include/access/xlogdefs.h`). PostgreSQL prints it as two
//! hexadecimal 32-bit halves separated by a slash, e.g. `16/B374D848`
//! (`LSN_FORMAT_ARGS`), and parses the same form in `pg_lsn_in`.
//!
//! Segment arithmetic on LSNs (`segment_number`, `segment_offset`) is defined
//! with the segment types in the segment module, which builds on this one;
//! this module knows nothing of segments.

use std::fmt;
use std::ops::Add;
use std::str::FromStr;

/// A position in the WAL, in bytes from the start of the WAL stream.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `InvalidXLogRecPtr`: zero, never a valid WAL position.
    pub const INVALID: Lsn = Lsn(0);

    /// True unless this is [`Lsn::INVALID`].
    pub fn is_valid(self) -> bool {
        self != Lsn::INVALID
    }

    /// `self - other` in bytes, or `None` if `other` is past `self`.
    pub fn checked_sub(self, other: Lsn) -> Option<u64> {
        self.0.checked_sub(other.0)
    }

    /// `self + bytes`, or `None` on overflow.
    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }
}

impl Add<u64> for Lsn {
    type Output = Lsn;

    /// Advances by `rhs` bytes. Panics on overflow, like integer addition in debug builds.
    fn add(self, rhs: u64) -> Lsn {
        Lsn(self.0 + rhs)
    }
}

impl From<u64> for Lsn {
    fn from(value: u64) -> Self {
        Lsn(value)
    }
}

impl From<Lsn> for u64 {
    fn from(value: Lsn) -> Self {
        value.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The text was not an LSN in `X/X` hexadecimal form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers separated by '/'")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    /// Parses `X/X` with 1 to 8 hex digits on each side (as `pg_lsn_in` accepts).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |p: &str| {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u32::from_str_radix(p, 16).map_err(|_| err())
        };
        Ok(Lsn((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn display_and_parse() {
        let lsn = Lsn(0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), lsn);
        assert_eq!("16/b374d848".parse::<Lsn>().unwrap(), lsn);
        assert_eq!(Lsn::INVALID.to_string(), "0/0");
        assert_eq!("0/1".parse::<Lsn>().unwrap(), Lsn(1));
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in [
            "",
            "/",
            "1/",
            "/1",
            "1/2/3",
            "123456789/0",
            "x/1",
            "1 /2",
            "-1/2",
            "+1/2",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn arithmetic() {
        assert_eq!(Lsn(10).checked_sub(Lsn(4)), Some(6));
        assert_eq!(Lsn(4).checked_sub(Lsn(10)), None);
        assert_eq!(Lsn(4) + 6, Lsn(10));
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
        assert!(!Lsn::INVALID.is_valid());
    }

    proptest! {
        #[test]
        fn round_trip(v in any::<u64>()) {
            let lsn = Lsn(v);
            prop_assert_eq!(lsn.to_string().parse::<Lsn>().unwrap(), lsn);
        }
    }
}
