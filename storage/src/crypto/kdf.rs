//! Argon2id: from a passphrase and a salt to the 256-bit key that wraps the master key
//! (RFC 9106; RustCrypto's `argon2`).
//!
//! Defaults ([`KdfParams::DEFAULT`]): 64 MiB of memory, 3 passes, 1 lane. That is RFC 9106's
//! second recommended option (section 4: 64 MiB, t = 3) with one lane instead of four,
//! because `argon2` computes lanes one after another: more lanes would cost us time without
//! costing a GPU attacker more. It takes about 0.1–0.3 s on one core and 64 MiB, which every
//! database host can spare at start-up, and makes each guess of an attacker holding a key
//! file cost the same 64 MiB. Parameters are stored in each key file, so stronger ones can
//! be used for new keys without breaking old ones.
//!
//! A key file comes from the bucket, which others may write: its parameters are accepted
//! only within [`KdfParams::check`]'s bounds (at most 1 GiB, 16 passes, 16 lanes), so a
//! hostile file cannot make an agent allocate 100 GB or spin for an hour.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Passphrase, KEY_LEN};

/// Argon2 version 0x13 (1.3), the only one written and read.
pub const ARGON2_VERSION: u32 = 0x13;
/// Length of the random salt of each key file, in bytes.
pub const SALT_LEN: usize = 32;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB (Argon2's `m`).
    pub m_cost_kib: u32,
    /// Passes over the memory (Argon2's `t`).
    pub t_cost: u32,
    /// Lanes (Argon2's `p`).
    pub p_cost: u32,
}

impl KdfParams {
    /// 64 MiB, 3 passes, 1 lane (see the module documentation for why).
    pub const DEFAULT: KdfParams = KdfParams {
        m_cost_kib: 64 * 1024,
        t_cost: 3,
        p_cost: 1,
    };
    /// Most memory a key file may ask for: 1 GiB.
    pub const MAX_M_COST_KIB: u32 = 1024 * 1024;
    /// Most passes a key file may ask for.
    pub const MAX_T_COST: u32 = 16;
    /// Most lanes a key file may ask for.
    pub const MAX_P_COST: u32 = 16;

    /// Checks the parameters against the bounds above and Argon2's own minimums (8 KiB per
    /// lane, one pass).
    ///
    /// Errors: a sentence saying which bound is broken.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=Self::MAX_P_COST).contains(&self.p_cost) {
            return Err(format!(
                "argon2 p_cost {} is outside 1..={}",
                self.p_cost,
                Self::MAX_P_COST
            ));
        }
        if !(1..=Self::MAX_T_COST).contains(&self.t_cost) {
            return Err(format!(
                "argon2 t_cost {} is outside 1..={}",
                self.t_cost,
                Self::MAX_T_COST
            ));
        }
        let min_m = 8 * self.p_cost;
        if !(min_m..=Self::MAX_M_COST_KIB).contains(&self.m_cost_kib) {
            return Err(format!(
                "argon2 m_cost {} KiB is outside {min_m}..={} KiB",
                self.m_cost_kib,
                Self::MAX_M_COST_KIB
            ));
        }
        Ok(())
    }

    /// Derives the 256-bit access key from `passphrase` and `salt` (Argon2id, version 0x13).
    /// CPU- and memory-bound for a fraction of a second: call it from a blocking thread.
    ///
    /// Errors: the parameters fail [`KdfParams::check`], or Argon2 refuses the salt.
    pub fn derive(
        &self,
        passphrase: &Passphrase,
        salt: &[u8],
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, String> {
        self.check()?;
        let params = argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(KEY_LEN))
            .map_err(|e| format!("argon2 parameters: {e}"))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        argon
            .hash_password_into(passphrase.expose_bytes(), salt, &mut out[..])
            .map_err(|e| format!("argon2: {e}"))?;
        Ok(out)
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams::DEFAULT
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Cheap parameters for tests of everything but the cost itself.
    pub(crate) const FAST: KdfParams = KdfParams {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    #[test]
    fn defaults_are_in_bounds_and_hostile_ones_are_not() {
        KdfParams::DEFAULT.check().unwrap();
        FAST.check().unwrap();
        for bad in [
            KdfParams {
                m_cost_kib: 100 * 1024 * 1024,
                ..KdfParams::DEFAULT
            },
            KdfParams {
                t_cost: 1_000_000,
                ..KdfParams::DEFAULT
            },
            KdfParams {
                p_cost: 0,
                ..KdfParams::DEFAULT
            },
            KdfParams {
                t_cost: 0,
                ..KdfParams::DEFAULT
            },
            KdfParams {
                m_cost_kib: 8,
                p_cost: 4,
                t_cost: 1,
            },
        ] {
            let e = bad.check().unwrap_err();
            let p = Passphrase::new("x").unwrap();
            assert_eq!(bad.derive(&p, &[0; SALT_LEN]).unwrap_err(), e);
        }
    }

    #[test]
    fn derivation_depends_on_passphrase_salt_and_costs() {
        let p = Passphrase::new("correct horse battery staple").unwrap();
        let salt = [7u8; SALT_LEN];
        let k = FAST.derive(&p, &salt).unwrap();
        assert_eq!(k, FAST.derive(&p, &salt).unwrap(), "deterministic");
        assert_ne!(k, FAST.derive(&p, &[8u8; SALT_LEN]).unwrap());
        let q = Passphrase::new("correct horse battery stapler").unwrap();
        assert_ne!(k, FAST.derive(&q, &salt).unwrap());
        let more = KdfParams { t_cost: 2, ..FAST };
        assert_ne!(k, more.derive(&p, &salt).unwrap());
    }

    /// Known answer from the reference implementation (phc-winner-argon2's `argon2` command,
    /// Debian package `argon2`): `echo -n password | argon2 somesaltsomesalt -id -t 2
    /// -k 65536 -p 1 -l 32 -r`.
    #[test]
    fn matches_the_reference_implementation() {
        let p = Passphrase::new("password").unwrap();
        let params = KdfParams {
            m_cost_kib: 65536,
            t_cost: 2,
            p_cost: 1,
        };
        let k = params.derive(&p, b"somesaltsomesalt").unwrap();
        assert_eq!(
            hex::encode(*k),
            "fc33b78139231d34b71626bd6245c1d72efa190ad605c3d8166a72adcedfa2c2"
        );
    }
}
