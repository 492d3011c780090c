//! WAL pins: `pins/<store>.json` (DESIGN.md, "Store layout"; README, "Several stores").
//!
//! With several stores, a store that lags (an async store after an outage) may catch up by
//! copying WAL from another store instead of from staging. While it does, the store it copies
//! from must keep that WAL: the agent writes a pin there, naming the lagging store and the
//! first LSN it still needs, and `pgagent prune` of that store keeps every WAL object at or
//! after the lowest `from_lsn` of its pins. The pin is removed (or rewritten further on) as
//! the lagging store catches up.
//!
//! A pin is plain JSON, not a sealed envelope: it holds no data of the cluster (a store
//! name, a position, a time), and a reader needs no key to honour it. One that cannot be
//! read is an error, never skipped: skipping it could let prune delete WAL that is needed.
//!
//! ```json
//! {"store": "r2", "from_lsn": "0/5000000", "timeline": 1, "written_at": "2026-11-21T10:00:00Z"}
//! ```

use bytes::Bytes;
use pgagent_protocol::{Lsn, TimelineId};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::layout::{pin_key, PIN_PREFIX};
use crate::object_store::ObjectStore;

/// One pin: store `store` still needs the WAL from `from_lsn` on (on timeline `timeline`
/// and its successors), copied from the store holding this pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalPin {
    /// The name of the store that needs the WAL (a configured store's name).
    pub store: String,
    /// The first LSN it needs, as `X/Y` (PostgreSQL's notation).
    pub from_lsn: String,
    /// The timeline of `from_lsn`.
    pub timeline: u32,
    /// When the pin was written, RFC 3339 UTC.
    pub written_at: String,
}

impl WalPin {
    /// A pin for `store` from `from` on timeline `timeline`, written at `written_at`
    /// (RFC 3339).
    pub fn new(store: &str, from: Lsn, timeline: TimelineId, written_at: &str) -> WalPin {
        WalPin {
            store: store.to_string(),
            from_lsn: from.to_string(),
            timeline: timeline.0,
            written_at: written_at.to_string(),
        }
    }

    /// `from_lsn` parsed.
    ///
    /// Errors: [`StoreError::Corrupt`] naming the pin's key when it is not an `X/Y` LSN.
    pub fn from(&self) -> Result<Lsn, StoreError> {
        self.from_lsn.parse::<Lsn>().map_err(|e| {
            StoreError::corrupt(
                &pin_key(&self.store),
                format!("from_lsn {:?}: {e}", self.from_lsn),
            )
        })
    }

    /// The pin's key: `pins/<store>.json`.
    pub fn key(&self) -> String {
        pin_key(&self.store)
    }

    /// The pin as the JSON body of its object.
    pub fn to_json(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a pin serializes"))
    }

    /// Parses the body of the object at `key`.
    ///
    /// Errors: [`StoreError::Corrupt`] naming `key`: not a pin's JSON, an `X/Y` LSN that
    /// does not parse, or a `store` other than the one the key names.
    pub fn parse(key: &str, body: &[u8]) -> Result<WalPin, StoreError> {
        let pin: WalPin = serde_json::from_slice(body)
            .map_err(|e| StoreError::corrupt(key, format!("not a WAL pin: {e}")))?;
        if pin_key(&pin.store) != key {
            return Err(StoreError::corrupt(
                key,
                format!("the pin names store {:?}", pin.store),
            ));
        }
        pin.from()?;
        Ok(pin)
    }
}

/// Writes (or replaces) `pin` at its key in `store`.
///
/// Errors: the store's.
pub async fn put_pin(store: &dyn ObjectStore, pin: &WalPin) -> Result<(), StoreError> {
    store.put(&pin.key(), pin.to_json()).await
}

/// Every pin in `store`, in key order (one listing of `pins/`, one read per pin). A pin
/// deleted between the listing and its read is left out.
///
/// Errors: the store's; [`StoreError::Corrupt`] for a pin that cannot be read (see
/// [`WalPin::parse`]): a caller deciding what WAL to keep must not overlook one.
pub async fn read_pins(store: &dyn ObjectStore) -> Result<Vec<WalPin>, StoreError> {
    let mut keys: Vec<String> = store
        .list(PIN_PREFIX)
        .await?
        .into_iter()
        .map(|m| m.key)
        .filter(|k| k.ends_with(".json"))
        .collect();
    keys.sort();
    let mut pins = Vec::with_capacity(keys.len());
    for key in keys {
        match store.get(&key).await {
            Ok(body) => pins.push(WalPin::parse(&key, &body)?),
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(pins)
}

/// The pin with the lowest `from_lsn` among `pins`, with that LSN; `None` when there is
/// none.
///
/// Errors: a pin whose `from_lsn` does not parse.
pub fn lowest(pins: &[WalPin]) -> Result<Option<(Lsn, &WalPin)>, StoreError> {
    let mut low: Option<(Lsn, &WalPin)> = None;
    for p in pins {
        let at = p.from()?;
        if low.is_none_or(|(l, _)| at < l) {
            low = Some((at, p));
        }
    }
    Ok(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_round_trips_through_its_json() {
        let pin = WalPin::new(
            "r2",
            Lsn(0x5_0000_0028),
            TimelineId(2),
            "2026-11-21T10:00:00Z",
        );
        assert_eq!(pin.key(), "pins/r2.json");
        let json = pin.to_json();
        let text = std::str::from_utf8(&json).unwrap();
        assert_eq!(
            text,
            r#"{"store":"r2","from_lsn":"5/28","timeline":2,"written_at":"2026-11-21T10:00:00Z"}"#
        );
        assert_eq!(WalPin::parse("pins/r2.json", &json).unwrap(), pin);
        assert_eq!(pin.from().unwrap(), Lsn(0x5_0000_0028));
    }

    #[test]
    fn a_bad_pin_is_corrupt_naming_its_key() {
        for (key, body) in [
            ("pins/r2.json", "not json"),
            (
                "pins/r2.json",
                r#"{"store":"r2","from_lsn":"zz","timeline":1,"written_at":"x"}"#,
            ),
            (
                "pins/r2.json",
                r#"{"store":"nas","from_lsn":"0/1","timeline":1,"written_at":"x"}"#,
            ),
        ] {
            let e = WalPin::parse(key, body.as_bytes()).unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::Corrupt, "{body}");
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn the_lowest_pin_wins() {
        let a = WalPin::new("a", Lsn(0x300), TimelineId(1), "t");
        let b = WalPin::new("b", Lsn(0x100), TimelineId(1), "t");
        let pins = [a, b.clone()];
        assert_eq!(lowest(&pins).unwrap(), Some((Lsn(0x100), &b)));
        assert_eq!(lowest(&[]).unwrap(), None);
    }

    #[tokio::test]
    async fn read_pins_reads_every_pin_of_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::fs::FsStore::open(dir.path().to_path_buf())
            .await
            .unwrap();
        assert!(read_pins(&store).await.unwrap().is_empty());
        let r2 = WalPin::new("r2", Lsn(0x200_0000), TimelineId(1), "t");
        let b2 = WalPin::new("b2", Lsn(0x100_0000), TimelineId(1), "t");
        put_pin(&store, &r2).await.unwrap();
        put_pin(&store, &b2).await.unwrap();
        assert_eq!(read_pins(&store).await.unwrap(), vec![b2, r2]);
        store
            .put("pins/x.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let e = read_pins(&store).await.unwrap_err();
        assert!(e.to_string().contains("pins/x.json"), "{e}");
    }
}
