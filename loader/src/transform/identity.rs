//! A record's identity: who it is, independent of its position in the topic.

use uuid::Uuid;

/// Namespace for the deterministic raw ids (UUIDv5 of a record's identity).
const RAW_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b0e_55d1_4a47_9a53_0c2e_7b2d_a1f4);

/// Who a record is, independent of where it sits in the topic: a recreated topic restarts its
/// offsets and a re-published or mirrored record sits at new ones, so a position cannot say
/// whether two deliveries are the same record. The identity can.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// `fetch:<fetch id>` for the extractor's records, `sha256:<hex>` (of the payload) for
    /// records other tools produced: unique in `raw_data.record_key`.
    pub key: String,
    /// UUIDv5 of `key`: Parquet carries it before the database answers.
    pub raw_id: Uuid,
    /// SHA-256 of the payload as the topic holds it: the same id with other bytes is a conflict.
    pub digest: [u8; 32],
}

impl Identity {
    /// The identity of a record with `fetch_id` (the extractor's) or, without one, of its
    /// payload alone.
    pub fn of(fetch_id: Option<&str>, payload: &[u8]) -> Self {
        let digest = digest(payload);
        let key = match fetch_id {
            Some(id) => format!("fetch:{id}"),
            None => format!("sha256:{}", hex::encode(digest)),
        };
        Self {
            raw_id: Uuid::new_v5(&RAW_ID_NAMESPACE, key.as_bytes()),
            key,
            digest,
        }
    }
}

/// SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}
