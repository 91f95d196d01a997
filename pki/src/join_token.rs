//! Join tokens: `HJ1.<CA fingerprint>.<id>.<secret>`. The fingerprint lets an agent trust
//! the controller before it has any certificate (as kubeadm's `--discovery-token-ca-cert-hash`);
//! the id names the token (not secret); the secret proves the agent was invited. The
//! controller keeps only a hash of the secret.

use crate::PkiError;

const PREFIX: &str = "HJ1";
const ID_BYTES: usize = 4;
const SECRET_BYTES: usize = 16;

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate, hex.
    pub ca_fingerprint: String,
    /// The token's id, hex.
    pub id: String,
    /// The secret, hex.
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// A new token for the CA with `ca_fingerprint`.
    pub fn generate(ca_fingerprint: &str) -> Result<JoinToken, PkiError> {
        Ok(JoinToken {
            ca_fingerprint: ca_fingerprint.to_string(),
            id: crate::hex(&crate::random_bytes(ID_BYTES)?),
            secret: crate::hex(&crate::random_bytes(SECRET_BYTES)?),
        })
    }

    /// The hash the controller keeps instead of the secret.
    pub fn secret_hash(&self) -> String {
        use sha2::Digest;
        crate::hex(&sha2::Sha256::digest(self.secret.as_bytes()))
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{PREFIX}.{}.{}.{}",
            self.ca_fingerprint, self.id, self.secret
        )
    }
}

impl std::str::FromStr for JoinToken {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            PkiError::Token(format!("{why} (a join token looks like HJ1.<64 hex>.<8 hex>.<32 hex>; make one with `hutch token create`)"))
        };
        let parts: Vec<&str> = s.trim().split('.').collect();
        let [prefix, fingerprint, id, secret] = parts[..] else {
            return Err(bad("it does not have four dot-separated parts"));
        };
        if prefix != PREFIX {
            return Err(bad(&format!("it starts with '{prefix}', not {PREFIX}")));
        }
        let hex_of = |field: &str, len: usize| {
            field.len() == len
                && field
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex_of(fingerprint, 64) {
            return Err(bad("the CA fingerprint is not 64 lowercase hex digits"));
        }
        if !hex_of(id, ID_BYTES * 2) || !hex_of(secret, SECRET_BYTES * 2) {
            return Err(bad(
                "the id or the secret has the wrong length or characters",
            ));
        }
        Ok(JoinToken {
            ca_fingerprint: fingerprint.into(),
            id: id.into(),
            secret: secret.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_say_why() {
        let t = JoinToken::generate(&"ab".repeat(32)).expect("token");
        let parsed: JoinToken = t.to_string().parse().expect("parse");
        assert_eq!(parsed, t);
        assert_ne!(t.secret_hash(), t.secret);
        assert!(format!("{t:?}").contains(&t.id) && !format!("{t:?}").contains(&t.secret));
        for bad in [
            "",
            "HJ1",
            "HJ2.a.b.c",
            &t.to_string().to_uppercase(),
            &format!("{t}.x"),
        ] {
            let err = bad.parse::<JoinToken>().expect_err(bad);
            assert!(err.to_string().contains("hutch token create"), "{err}");
        }
    }
}
