//! Kubernetes resource quantities (`500m`, `1`, `64Mi`, `1.5Gi`, `2e3`), checked before they
//! reach a pod spec that the API server would refuse. The grammar is the one of
//! `k8s.io/apimachinery/pkg/api/resource/quantity.go`:
//!
//! ```text
//! <quantity>        ::= <signedNumber><suffix>
//! <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
//! <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
//! <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
//! <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
//! <decimalExponent> ::= "e" <signedNumber> | "E" <signedNumber>
//! ```
//!
//! A container's requests and limits must not be negative (`ValidateResourceRequirements`
//! in `k8s.io/kubernetes/pkg/apis/core/validation`), so a sign is refused here.

/// The value of a quantity, in base units (cores, bytes), as a float: enough to compare a
/// request with a limit.
///
/// Errors: not a quantity, or negative; the message says what one looks like.
pub fn parse(text: &str) -> Result<f64, String> {
    let bad = || {
        format!(
            "{text:?} is not a Kubernetes quantity (e.g. 500m or 1 for CPU, 64Mi or 1Gi for \
             memory)"
        )
    };
    if text.starts_with('-') {
        return Err(format!("{text:?}: a resource quantity cannot be negative"));
    }
    let body = text.strip_prefix('+').unwrap_or(text);
    let number_len = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(number_len);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    if digits == 0 || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp => {
            let exp = exp.strip_prefix(['e', 'E']).ok_or_else(bad)?;
            let unsigned = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if unsigned.is_empty() || !unsigned.chars().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            10f64.powi(exp.parse::<i32>().map_err(|_| bad())?)
        }
    };
    Ok(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_suffixes() {
        let cases = [
            ("500m", 0.5),
            ("1", 1.0),
            ("+2", 2.0),
            ("1.5", 1.5),
            (".5", 0.5),
            ("5.", 5.0),
            ("64Mi", 64.0 * 1024.0 * 1024.0),
            ("1Gi", 1024f64.powi(3)),
            ("128M", 128e6),
            ("2k", 2000.0),
            ("100u", 1e-4),
            ("2e3", 2000.0),
            ("1E-3", 0.001),
            ("0", 0.0),
        ];
        for (text, want) in cases {
            let got = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(
                (got - want).abs() <= want.abs() * 1e-12,
                "{text}: {got} != {want}"
            );
        }
    }

    #[test]
    fn refuses_what_kubernetes_refuses() {
        for text in [
            "", "m", "Mi", "1.2.3", "64MB", "64mi", "1 Gi", "e3", "1e", "1e+", "abc", "1KiB",
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains("not a Kubernetes quantity"), "{text}: {e}");
        }
        assert!(parse("-1").unwrap_err().contains("cannot be negative"));
    }
}
