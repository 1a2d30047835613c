//! `GetFeatureResponse` by hand, wire-identical to the generated message
//! (`message GetFeatureResponse { FeatureDashboard dashboard = 1; }`), so that a server can
//! send a dashboard the store keeps encoded as its bytes: a real dashboard is ~170 KB and
//! ~10,500 token strings, which decoding and re-encoding would copy twice more. Clients
//! decode it into `dashboard` as usual.

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, message, skip_field, DecodeContext, WireType};

use super::v1::FeatureDashboard;

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct GetFeatureResponse {
    /// The dashboard (what a decoded response holds).
    pub dashboard: Option<FeatureDashboard>,
    /// Or the bytes of an encoded `FeatureDashboard`, sent as they are (sent instead of
    /// `dashboard` when both are set).
    #[serde(skip)]
    pub encoded: Option<Bytes>,
}

impl GetFeatureResponse {
    pub fn of(dashboard: FeatureDashboard) -> Self {
        GetFeatureResponse { dashboard: Some(dashboard), encoded: None }
    }

    pub fn encoded(bytes: Bytes) -> Self {
        GetFeatureResponse { dashboard: None, encoded: Some(bytes) }
    }
}

impl prost::Message for GetFeatureResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match (&self.encoded, &self.dashboard) {
            (Some(bytes), _) => {
                encode_key(1, WireType::LengthDelimited, buf);
                encode_varint(bytes.len() as u64, buf);
                buf.put_slice(bytes);
            }
            (None, Some(dashboard)) => message::encode(1, dashboard, buf),
            (None, None) => {}
        }
    }

    fn merge_field(&mut self, tag: u32, wire_type: WireType, buf: &mut impl Buf, ctx: DecodeContext) -> Result<(), prost::DecodeError> {
        match tag {
            1 => message::merge(wire_type, self.dashboard.get_or_insert_with(Default::default), buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let body = match (&self.encoded, &self.dashboard) {
            (Some(bytes), _) => bytes.len(),
            (None, Some(dashboard)) => prost::Message::encoded_len(dashboard),
            (None, None) => return 0,
        };
        key_len(1) + encoded_len_varint(body as u64) + body
    }

    fn clear(&mut self) {
        self.dashboard = None;
        self.encoded = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1 as pb;
    use prost::Message;

    fn dashboard() -> pb::FeatureDashboard {
        pb::FeatureDashboard {
            feature: Some(pb::FeatureRef { dictionary_id: "d".into(), feature: 7 }),
            label: Some("cats".into()),
            max_activation: 3.5,
            top_examples: vec![pb::Example { tokens: vec![" the".into(), " cat".into()], token_ids: vec![1, 2], activations: vec![0.0, 3.5], ..Default::default() }],
            hook: "blocks.9.hook_resid_post".into(),
            ..Default::default()
        }
    }

    #[test]
    fn encoded_bytes_go_out_as_the_decoded_message_would() {
        let decoded = GetFeatureResponse::of(dashboard());
        let encoded = GetFeatureResponse::encoded(Bytes::from(dashboard().encode_to_vec()));
        assert_eq!(encoded.encode_to_vec(), decoded.encode_to_vec());
        assert_eq!(encoded.encoded_len(), decoded.encoded_len());
        let read = GetFeatureResponse::decode(encoded.encode_to_vec().as_slice()).unwrap();
        assert_eq!(read, decoded);
        assert_eq!(GetFeatureResponse::default().encode_to_vec(), Vec::<u8>::new());
    }
}
