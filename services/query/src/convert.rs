//! Store records to API messages.

use loupe_schema::proto::v1 as pb;
use loupe_store::DictionaryRecord;

pub fn feature_ref(dictionary_id: &str, feature: u32) -> Option<pb::FeatureRef> {
    Some(pb::FeatureRef { dictionary_id: dictionary_id.to_string(), feature })
}

pub fn dictionary(record: &DictionaryRecord, loaded: bool) -> pb::Dictionary {
    pb::Dictionary {
        dictionary_id: record.dictionary_id.clone(),
        model_id: record.model_id.clone(),
        model_checksum: record.model_checksum.clone(),
        hook: record.hook.clone(),
        hook_out: record.hook_out.clone(),
        layer: record.layer,
        architecture: record.architecture.clone(),
        d_in: record.d_in,
        d_sae: record.d_sae,
        source_format: record.source_format.clone(),
        source_checksum: record.source_checksum.clone(),
        manifest_json: record.manifest.to_string(),
        created_at: record.created_at.clone(),
        loaded,
    }
}

/// Drops the parts of `dashboard` that `parts` does not ask for.
pub fn keep_parts(dashboard: &mut pb::FeatureDashboard, parts: &pb::DashboardParts) {
    if !parts.top_examples {
        dashboard.top_examples.clear();
    }
    if !parts.interval_examples {
        dashboard.interval_examples.clear();
    }
    if !parts.histogram {
        dashboard.histogram = None;
    }
    if !parts.logits {
        dashboard.top_logits.clear();
        dashboard.bottom_logits.clear();
    }
    if !parts.neighbours {
        dashboard.neighbours.clear();
    }
}
