//! Keyed digests of Secret and ConfigMap data.
//!
//! Digests end up in workload annotations, which far more people can read than
//! the Secrets themselves. A plain hash of a short password can be brute-forced
//! offline from such an annotation, so every digest is an HMAC-SHA256 under a
//! 32-byte key only the operator knows (kept in a Secret in its own namespace),
//! truncated to 128 bits — plenty to tell "changed" from "unchanged".
//!
//! A digest is also bound to the object it is of (namespace, kind and name):
//! equal data in two namespaces, or in two Secrets, gives unrelated digests,
//! so a tenant who creates a Secret with a guess in its own namespace learns
//! nothing by comparing its workload's digest with another team's.
//!
//! Only data counts: keys and values (a ConfigMap's `data` and `binaryData` as
//! separate sections), in key order, each length-prefixed so no two different
//! maps share an encoding. Labels, annotations and no-op writes leave the
//! digest, and therefore the workloads, alone.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use k8s_openapi::ByteString;
use sha2::Sha256;

/// Bytes of key material.
pub const KEY_LEN: usize = 32;

const DIGEST_LEN: usize = 16;

/// The operator's digest key. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct DigestKey([u8; KEY_LEN]);

impl fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DigestKey({})", self.id())
    }
}

/// A key of the wrong size (someone edited the key Secret by hand).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the digest key must be {KEY_LEN} bytes, found {0}")]
pub struct WrongKeyLength(pub usize);

impl DigestKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        DigestKey(rand::random())
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, WrongKeyLength> {
        bytes
            .try_into()
            .map(DigestKey)
            .map_err(|_| WrongKeyLength(bytes.len()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A short public name of the key, stored next to the digests so that a
    /// replaced key is recognised (and leads to a re-baseline rather than to
    /// every workload in the cluster restarting at once).
    pub fn id(&self) -> String {
        let mut mac = self.mac();
        // "v2": digests bound to their object. Records made under v1 (data
        // only) carry another id, so they are re-baselined, not restarted.
        mac.update(b"kvsync reload digest key id v2");
        hex::encode(&mac.finalize().into_bytes()[..4])
    }

    /// Digest of a Secret's `data`.
    pub fn secret(
        &self,
        object: Object<'_>,
        data: Option<&BTreeMap<String, ByteString>>,
    ) -> Digest {
        let mut mac = self.mac_of(b'S', object);
        section(
            &mut mac,
            b'S',
            data.into_iter().flatten().map(|(k, v)| (k, v.0.as_slice())),
        );
        finish(mac)
    }

    /// Digest of a ConfigMap's `data` and `binaryData`.
    pub fn config_map(
        &self,
        object: Object<'_>,
        data: Option<&BTreeMap<String, String>>,
        binary_data: Option<&BTreeMap<String, ByteString>>,
    ) -> Digest {
        let mut mac = self.mac_of(b'C', object);
        section(
            &mut mac,
            b'D',
            data.into_iter().flatten().map(|(k, v)| (k, v.as_bytes())),
        );
        section(
            &mut mac,
            b'B',
            binary_data
                .into_iter()
                .flatten()
                .map(|(k, v)| (k, v.0.as_slice())),
        );
        finish(mac)
    }

    /// Digest of one entry (key and value) of a Secret or ConfigMap, for
    /// key-level restarts (see [`Digest::of_keys`]).
    pub fn entry(&self, object: Object<'_>, key: &str, value: &[u8]) -> Digest {
        let mut mac = self.mac_of(b'K', object);
        for part in [key.as_bytes(), value] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        finish(mac)
    }

    /// The MAC of one object's digest: kind, namespace and name first.
    fn mac_of(&self, kind: u8, object: Object<'_>) -> Hmac<Sha256> {
        let mut mac = self.mac();
        mac.update(&[kind]);
        for part in [object.namespace, object.name] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC accepts keys of any length")
    }
}

/// The object a digest is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Object<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
}

fn section<'a>(
    mac: &mut Hmac<Sha256>,
    tag: u8,
    entries: impl Iterator<Item = (&'a String, &'a [u8])>,
) {
    let length_prefixed = |mac: &mut Hmac<Sha256>, bytes: &[u8]| {
        mac.update(&(bytes.len() as u64).to_be_bytes());
        mac.update(bytes);
    };
    mac.update(&[tag]);
    // BTreeMap iteration is already in key order.
    for (key, value) in entries {
        length_prefixed(mac, key.as_bytes());
        length_prefixed(mac, value);
    }
    // Marks the end of the section, so entries cannot move between sections.
    mac.update(&u64::MAX.to_be_bytes());
}

fn finish(mac: Hmac<Sha256>) -> Digest {
    let full = mac.finalize().into_bytes();
    let mut digest = [0; DIGEST_LEN];
    digest.copy_from_slice(&full[..DIGEST_LEN]);
    Digest(digest)
}

/// The keyed digest of one resource's data.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest([u8; DIGEST_LEN]);

impl Digest {
    /// The digest of some keys of a resource, from its entries' keyed
    /// digests (sorted by key): it changes when one of `keys` is added,
    /// removed or gets another value, and only then. Never equal to a
    /// whole-resource digest, so a workload switching between key-level and
    /// whole uses is re-recorded, not restarted (its record's key id differs).
    pub fn of_keys(entries: &[(String, Digest)], keys: &[String]) -> Digest {
        use sha2::Digest as _;
        let mut hash = Sha256::new();
        hash.update(b"kvsync reload keys v1");
        for key in keys {
            hash.update((key.len() as u64).to_be_bytes());
            hash.update(key.as_bytes());
            match entries.binary_search_by(|(k, _)| k.as_str().cmp(key)) {
                Ok(i) => {
                    hash.update([1]);
                    hash.update(entries[i].1.0);
                }
                Err(_) => hash.update([0]),
            }
        }
        let mut digest = [0; DIGEST_LEN];
        digest.copy_from_slice(&hash.finalize()[..DIGEST_LEN]);
        Digest(digest)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = ();
    fn from_str(text: &str) -> Result<Self, ()> {
        let mut digest = [0; DIGEST_LEN];
        hex::decode_to_slice(text, &mut digest).map_err(|_| ())?;
        Ok(Digest(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DB: Object = Object {
        namespace: "shop",
        name: "db",
    };

    fn bytes(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn digest_depends_on_data_only_and_on_all_of_it() {
        let key = DigestKey::generate();
        let base = key.secret(
            DB,
            Some(&bytes(&[("user", "admin"), ("password", "hunter2")])),
        );
        assert_eq!(
            base,
            key.secret(
                DB,
                Some(&bytes(&[("password", "hunter2"), ("user", "admin")]))
            )
        );
        assert_ne!(
            base,
            key.secret(
                DB,
                Some(&bytes(&[("user", "admin"), ("password", "hunter3")]))
            )
        );
        assert_ne!(base, key.secret(DB, Some(&bytes(&[("user", "admin")]))));
        assert_ne!(
            base,
            key.secret(
                DB,
                Some(&bytes(&[("user", "admin"), ("passwd", "hunter2")]))
            )
        );
        assert_eq!(
            key.secret(DB, None),
            key.secret(DB, Some(&bytes(&[]))),
            "no data is empty data"
        );
    }

    #[test]
    fn encoding_is_unambiguous() {
        let key = DigestKey::generate();
        assert_ne!(
            key.secret(DB, Some(&bytes(&[("ab", "c")]))),
            key.secret(DB, Some(&bytes(&[("a", "bc")])))
        );
        let text = key.config_map(DB, Some(&strings(&[("k", "v")])), None);
        let binary = key.config_map(DB, None, Some(&bytes(&[("k", "v")])));
        assert_ne!(text, binary, "data and binaryData are different places");
    }

    #[test]
    fn digest_is_keyed() {
        let data = bytes(&[("password", "1234")]);
        let (a, b) = (DigestKey::generate(), DigestKey::generate());
        assert_ne!(a.secret(DB, Some(&data)), b.secret(DB, Some(&data)));
        assert_ne!(a.id(), b.id());
        let again = DigestKey::from_bytes(a.as_bytes()).unwrap();
        assert_eq!(a.secret(DB, Some(&data)), again.secret(DB, Some(&data)));
        assert_eq!(a.id(), again.id());
        assert_eq!(
            DigestKey::from_bytes(&[1; 31]).unwrap_err(),
            WrongKeyLength(31)
        );
        assert!(!format!("{a:?}").contains(&hex::encode(a.as_bytes())));
    }

    #[test]
    fn equal_data_in_two_objects_gives_unrelated_digests() {
        let key = DigestKey::generate();
        let data = bytes(&[("password", "4711")]);
        let other_team = Object {
            namespace: "attacker",
            ..DB
        };
        let other_name = Object { name: "db2", ..DB };
        let digest = key.secret(DB, Some(&data));
        assert_ne!(digest, key.secret(other_team, Some(&data)));
        assert_ne!(digest, key.secret(other_name, Some(&data)));
        let split = Object {
            namespace: "sho",
            name: "pdb",
        };
        assert_ne!(
            digest,
            key.secret(split, Some(&data)),
            "parts are length-prefixed"
        );
        let as_config_map = key.config_map(DB, None, Some(&data));
        assert_ne!(
            digest, as_config_map,
            "a Secret and a ConfigMap of one name"
        );
    }

    #[test]
    fn digest_text_round_trips() {
        let digest = DigestKey::generate().secret(DB, None);
        let text = digest.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<Digest>(), Ok(digest));
        assert!("xyz".parse::<Digest>().is_err());
        assert!("00".parse::<Digest>().is_err());
    }
}
