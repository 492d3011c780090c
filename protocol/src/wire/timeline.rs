//! Timeline identifiers (`TimeLineID` in `src/include/access/xlogdefs.h`).

use std::fmt;
use std::str::FromStr;

/// A timeline: a 32-bit number, printed in decimal (as in `IDENTIFY_SYSTEM`
/// and history files) and as 8 uppercase hex digits in file names.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TimelineId(pub u32);

impl TimelineId {
    /// The timeline every cluster starts on after `initdb`.
    pub const FIRST: TimelineId = TimelineId(1);
}

impl Default for TimelineId {
    fn default() -> Self {
        TimelineId::FIRST
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The text was not a decimal timeline number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timeline {0:?}: expected a decimal number")]
pub struct ParseTimelineError(String);

impl FromStr for TimelineId {
    type Err = ParseTimelineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseTimelineError(s.to_owned()));
        }
        s.parse::<u32>()
            .map(TimelineId)
            .map_err(|_| ParseTimelineError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse() {
        assert_eq!("1".parse::<TimelineId>().unwrap(), TimelineId(1));
        assert_eq!(TimelineId(42).to_string(), "42");
        assert!("".parse::<TimelineId>().is_err());
        assert!("-1".parse::<TimelineId>().is_err());
        assert!("0x1".parse::<TimelineId>().is_err());
        assert!("4294967296".parse::<TimelineId>().is_err());
    }

    proptest! {
        #[test]
        fn round_trip(v in any::<u32>()) {
            prop_assert_eq!(TimelineId(v).to_string().parse::<TimelineId>().unwrap(), TimelineId(v));
        }
    }
}
