//! `SearchFeaturesResponse` by hand, wire-identical to the generated message (see
//! `proto/loupe/v1/features.proto`), so that a server can send a cached answer as the bytes
//! it encoded once: cloning a page of hits (labels, snippets, highlights) and encoding it
//! again on every cache hit was ~10% of a cached search's CPU. Clients decode it into
//! `total`, `hits` and `total_is_estimate` as usual.

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{bool as pb_bool, message, skip_field, uint64, DecodeContext, WireType};

use super::v1::SearchHit;

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SearchFeaturesResponse {
    /// All matching features (not only this page): counted exactly up to the server's
    /// `limits.search_exact_total` (10,000 by default), estimated beyond it.
    pub total: u64,
    pub hits: Vec<SearchHit>,
    /// `total` is an estimate (more matches than the server counts exactly).
    pub total_is_estimate: bool,
    /// Or the whole message, encoded (sent instead of the fields above when set).
    #[serde(skip)]
    pub encoded: Option<Bytes>,
}

impl SearchFeaturesResponse {
    /// The same answer as its encoded bytes: encoded once here, then sent as they are.
    pub fn into_encoded(self) -> Self {
        if self.encoded.is_some() {
            return self;
        }
        SearchFeaturesResponse { encoded: Some(Bytes::from(prost::Message::encode_to_vec(&self))), ..Default::default() }
    }
}

impl prost::Message for SearchFeaturesResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(bytes) = &self.encoded {
            return buf.put_slice(bytes);
        }
        if self.total != 0 {
            uint64::encode(1, &self.total, buf);
        }
        for hit in &self.hits {
            message::encode(2, hit, buf);
        }
        if self.total_is_estimate {
            pb_bool::encode(3, &self.total_is_estimate, buf);
        }
    }

    fn merge_field(&mut self, tag: u32, wire_type: WireType, buf: &mut impl Buf, ctx: DecodeContext) -> Result<(), prost::DecodeError> {
        match tag {
            1 => uint64::merge(wire_type, &mut self.total, buf, ctx),
            2 => message::merge_repeated(wire_type, &mut self.hits, buf, ctx),
            3 => pb_bool::merge(wire_type, &mut self.total_is_estimate, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        if let Some(bytes) = &self.encoded {
            return bytes.len();
        }
        (if self.total != 0 { uint64::encoded_len(1, &self.total) } else { 0 })
            + message::encoded_len_repeated(2, &self.hits)
            + if self.total_is_estimate { pb_bool::encoded_len(3, &self.total_is_estimate) } else { 0 }
    }

    fn clear(&mut self) {
        *self = SearchFeaturesResponse::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1 as pb;
    use prost::Message;

    /// The message as prost generates it from features.proto (the reference for the wire).
    #[derive(Clone, PartialEq, prost::Message)]
    struct Generated {
        #[prost(uint64, tag = "1")]
        total: u64,
        #[prost(message, repeated, tag = "2")]
        hits: Vec<pb::SearchHit>,
        #[prost(bool, tag = "3")]
        total_is_estimate: bool,
    }

    fn hits() -> Vec<pb::SearchHit> {
        (0..3)
            .map(|i| pb::SearchHit {
                feature: Some(pb::FeatureRef { dictionary_id: "d".into(), feature: 7 + i }),
                score: 1.5 / (i + 1) as f32,
                label: Some(format!("cats {i}")),
                snippet: "the cat sat".into(),
                highlights: vec![pb::Range { start: 4, end: 7 }],
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn both_forms_go_out_as_the_generated_message_would() {
        for (total, hits, estimate) in [(0, vec![], false), (3, hits(), false), (123_456, hits(), true)] {
            let generated = Generated { total, hits: hits.clone(), total_is_estimate: estimate }.encode_to_vec();
            let decoded = SearchFeaturesResponse { total, hits, total_is_estimate: estimate, encoded: None };
            let encoded = decoded.clone().into_encoded();
            assert!(encoded.hits.is_empty() && encoded.encoded.is_some());
            for form in [&decoded, &encoded] {
                assert_eq!(form.encode_to_vec(), generated);
                assert_eq!(form.encoded_len(), generated.len());
            }
            assert_eq!(SearchFeaturesResponse::decode(generated.as_slice()).unwrap(), decoded);
        }
    }
}
