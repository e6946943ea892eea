use std::{fmt, str::FromStr};

use crate::CertError;

/// SHA-256 of a DER certificate: what a client pins and what browsers get in `serverCertificateHashes`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

/// SHA-256 of `der`.
pub fn sha256(der: &[u8]) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Fingerprint(out)
}

impl fmt::Display for Fingerprint {
    /// Lower-case hex, 64 digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = CertError;

    /// 64 hex digits; `:` separators (as `openssl x509 -fingerprint` prints) are allowed.
    fn from_str(input: &str) -> Result<Self, CertError> {
        let bad = |reason| CertError::BadFingerprint { input: input.to_string(), reason };
        let digits: Vec<u8> = input.trim().bytes().filter(|&b| b != b':').collect();
        if digits.len() != 64 {
            return Err(bad("expected 64 hex digits (SHA-256)"));
        }
        // Checked here: `from_str_radix` would take a sign ("+a" is 10).
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad("not hex"));
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks(2)) {
            let text = std::str::from_utf8(pair).map_err(|_| bad("not hex"))?;
            *byte = u8::from_str_radix(text, 16).map_err(|_| bad("not hex"))?;
        }
        Ok(Fingerprint(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_are_not_hex_digits() {
        assert!("+0".repeat(32).parse::<Fingerprint>().is_err());
        assert!("-0".repeat(32).parse::<Fingerprint>().is_err());
        assert!("0a".repeat(32).parse::<Fingerprint>().is_ok());
    }

    #[test]
    fn hex_round_trip_and_known_digest() {
        let empty = sha256(b"");
        assert_eq!(empty.to_string(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(empty.to_string().parse::<Fingerprint>().unwrap(), empty);
        let colons = empty.0.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
        assert_eq!(colons.parse::<Fingerprint>().unwrap(), empty);
    }

    #[test]
    fn bad_hex_is_refused() {
        assert!(matches!("abc".parse::<Fingerprint>(), Err(CertError::BadFingerprint { .. })));
        assert!(matches!("zz".repeat(32).parse::<Fingerprint>(), Err(CertError::BadFingerprint { .. })));
    }
}
