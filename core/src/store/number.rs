//! Numbers in ADD: the stored value (lenient, like `strtoll`) and the increment (canonical).

use core::fmt::Write as _;

/// `strtoll`-like parse used for the stored value of ADD: leading whitespace, sign, digits, stops
/// at the first non-digit; no digits, overflow, or a 0 not spelled "0" are refused (SPEC 5.4).
pub fn parse_stored_i64(b: &[u8]) -> Option<i64> {
    let (v, digits) = parse_lenient(b)?;
    if digits == 0 || (v == 0 && b != b"0") {
        return None;
    }
    Some(v)
}

/// Leading whitespace, optional sign, digits until the first non-digit: (value, digit count).
/// `None` on overflow.
fn parse_lenient(b: &[u8]) -> Option<(i64, usize)> {
    let mut i = b
        .iter()
        .take_while(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
        .count();
    let neg = match b.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let mut v: i64 = 0;
    let mut n = 0;
    while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
        let d = i64::from(d - b'0');
        v = v.checked_mul(10)?;
        v = if neg {
            v.checked_sub(d)?
        } else {
            v.checked_add(d)?
        };
        i += 1;
        n += 1;
    }
    Some((v, n))
}

/// The ADD increment: must parse entirely, and be canonical.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Increment {
    /// The increment.
    Ok(i64),
    /// A number, but not written canonically (`+1`, `01`, ` 1`, `-0`).
    NonCanonical,
    /// Not a number, or out of range.
    Unparseable,
}

/// Classify the ADD increment text.
pub fn parse_increment(b: &[u8]) -> Increment {
    match parse_lenient(b) {
        Some((v, n)) if n > 0 => {
            let mut canon = heapless::String::<20>::new();
            // An i64 has at most 20 characters.
            let _ = write!(canon, "{v}");
            if canon.as_bytes() == b {
                Increment::Ok(v)
            } else {
                // Does the whole text parse (whitespace/sign/digits only)?
                let ws = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
                let rest = &b[ws..];
                let rest = rest
                    .strip_prefix(b"+")
                    .or_else(|| rest.strip_prefix(b"-"))
                    .unwrap_or(rest);
                if !rest.is_empty() && rest.iter().all(u8::is_ascii_digit) {
                    Increment::NonCanonical
                } else {
                    Increment::Unparseable
                }
            }
        }
        _ => Increment::Unparseable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_and_increment_parsing() {
        assert_eq!(parse_stored_i64(b"+7"), Some(7));
        assert_eq!(parse_stored_i64(b" 7"), Some(7));
        assert_eq!(parse_stored_i64(b"07"), Some(7));
        assert_eq!(parse_stored_i64(b"0"), Some(0));
        assert_eq!(parse_stored_i64(b"00"), None);
        assert_eq!(parse_stored_i64(b""), None);
        assert_eq!(parse_stored_i64(b"-5"), Some(-5));
        assert_eq!(parse_stored_i64(b"99999999999999999999"), None);
        assert!(parse_increment(b"1") == Increment::Ok(1));
        assert!(parse_increment(b"-12") == Increment::Ok(-12));
        for nc in [&b"+1"[..], b"01", b" 1", b"-0"] {
            assert!(
                matches!(parse_increment(nc), Increment::NonCanonical),
                "{nc:?}"
            );
        }
        for un in [&b""[..], b"abc", b"99999999999999999999", b"1x", b"-"] {
            assert!(
                matches!(parse_increment(un), Increment::Unparseable),
                "{un:?}"
            );
        }
    }
}
