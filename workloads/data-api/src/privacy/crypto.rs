//! The cryptography of sealing, the email index and export pseudonyms, all from `ring`:
//! ChaCha20-Poly1305 for the personal part (random 96-bit nonces, the household id as
//! associated data so a ciphertext cannot be moved to another household), HMAC-SHA256
//! for the email digest, for pseudonyms and to derive one key per purpose.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use uuid::Uuid;

use super::vault::{HouseholdKey, KEY_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the system random number generator failed")]
    Random,
    #[error("the sealed personal part of household {0} does not open with its key")]
    Unopenable(Uuid),
}

/// One key per purpose, so no two uses ever share a key.
fn derive(secret: &[u8], purpose: &str) -> [u8; KEY_BYTES] {
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, secret),
        purpose.as_bytes(),
    );
    tag.as_ref().try_into().expect("HMAC-SHA256 gives 32 bytes")
}

fn sealing_key(key: &HouseholdKey) -> LessSafeKey {
    let derived = derive(&key.0, "data-api personal part sealing");
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &derived).expect("32-byte key"))
}

/// Encrypts `plaintext` for `household`: hex of nonce ‖ ciphertext ‖ tag.
pub fn seal(key: &HouseholdKey, household: Uuid, plaintext: &[u8]) -> Result<String, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| SealError::Random)?;
    let mut buffer = plaintext.to_vec();
    sealing_key(key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(household.as_bytes()),
            &mut buffer,
        )
        .map_err(|_| SealError::Random)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buffer);
    Ok(hex::encode(out))
}

/// Decrypts what [`seal`] produced for the same household.
pub fn open(key: &HouseholdKey, household: Uuid, sealed: &str) -> Result<Vec<u8>, SealError> {
    let unopenable = || SealError::Unopenable(household);
    let bytes = hex::decode(sealed).map_err(|_| unopenable())?;
    if bytes.len() < NONCE_LEN + aead::MAX_TAG_LEN {
        return Err(unopenable());
    }
    let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| unopenable())?;
    let mut buffer = ciphertext.to_vec();
    let plaintext = sealing_key(key)
        .open_in_place(nonce, Aad::from(household.as_bytes()), &mut buffer)
        .map_err(|_| unopenable())?;
    Ok(plaintext.to_vec())
}

/// What the email uniqueness index holds: HMAC-SHA256 of the lowercase email under a key
/// derived from the server secret, in hex. Lookups compute the same digest.
pub fn email_index(server_secret: &[u8; KEY_BYTES], email: &str) -> String {
    let key = hmac::Key::new(
        hmac::HMAC_SHA256,
        &derive(server_secret, "data-api email index"),
    );
    hex::encode(hmac::sign(&key, email.trim().to_lowercase().as_bytes()))
}

/// Maps one household's ids to the pseudonymous ids its exports carry. While the
/// household takes part the key derives from its own key, so destroying that key at
/// revocation leaves no way to recompute (and so to link) the pseudonyms of earlier
/// exports; afterwards it derives from the server secret and the household id.
pub struct ExportPseudonyms {
    key: hmac::Key,
}

impl ExportPseudonyms {
    pub fn of_participant(key: &HouseholdKey) -> ExportPseudonyms {
        ExportPseudonyms {
            key: hmac::Key::new(
                hmac::HMAC_SHA256,
                &derive(&key.0, "data-api export pseudonyms"),
            ),
        }
    }

    pub fn of_anonymized(server_secret: &[u8; KEY_BYTES], household: Uuid) -> ExportPseudonyms {
        let mut purpose = "data-api anonymized export pseudonyms ".to_owned();
        purpose.push_str(&household.to_string());
        ExportPseudonyms {
            key: hmac::Key::new(hmac::HMAC_SHA256, &derive(server_secret, &purpose)),
        }
    }

    /// The pseudonym of `id`, a household, meter, device, PV system or measurement uuid;
    /// `kind` keeps equal uuids of different kinds apart.
    pub fn of(&self, kind: &str, id: Uuid) -> Uuid {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(kind.as_bytes());
        context.update(b"\0");
        context.update(id.as_bytes());
        let tag = context.sign();
        let bytes: [u8; 16] = tag.as_ref()[..16].try_into().expect("16 of 32 bytes");
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_text_opens_only_for_its_household_and_key() {
        let key = HouseholdKey([7; KEY_BYTES]);
        let id = Uuid::new_v4();
        let sealed = seal(&key, id, b"Augustusplatz 10").unwrap();
        assert!(!sealed.contains(&hex::encode("Augustusplatz")));
        assert_eq!(open(&key, id, &sealed).unwrap(), b"Augustusplatz 10");
        assert!(open(&key, Uuid::new_v4(), &sealed).is_err());
        assert!(open(&HouseholdKey([8; KEY_BYTES]), id, &sealed).is_err());
        assert!(open(&key, id, "00").is_err());
        assert_ne!(seal(&key, id, b"x").unwrap(), seal(&key, id, b"x").unwrap());
    }

    #[test]
    fn email_digest_ignores_case_and_depends_on_the_secret() {
        let secret = [1; KEY_BYTES];
        assert_eq!(
            email_index(&secret, "Erika@Example.org"),
            email_index(&secret, "erika@example.org")
        );
        assert_ne!(
            email_index(&secret, "erika@example.org"),
            email_index(&[2; KEY_BYTES], "erika@example.org")
        );
        assert!(!email_index(&secret, "erika@example.org").contains("erika"));
    }

    #[test]
    fn pseudonyms_change_with_the_key_and_the_kind() {
        let id = Uuid::new_v4();
        let before = ExportPseudonyms::of_participant(&HouseholdKey([3; KEY_BYTES]));
        let after = ExportPseudonyms::of_anonymized(&[4; KEY_BYTES], id);
        assert_eq!(before.of("household", id), before.of("household", id));
        assert_ne!(before.of("household", id), after.of("household", id));
        assert_ne!(before.of("household", id), before.of("meter", id));
        assert_ne!(before.of("household", id), id);
    }
}
