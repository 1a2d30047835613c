//! Store records to API messages.

use loupe_schema::proto::v1 as pb;
use loupe_store::{DictionaryRecord, ExampleKind, ExampleRecord, FeatureRecord, LogitEffect};

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

fn logits(effects: &[LogitEffect]) -> Vec<pb::LogitEffect> {
    effects.iter().map(|l| pb::LogitEffect { token_id: l.token_id, token: l.token.clone(), value: l.value }).collect()
}

/// Moves the example's token lists into the message instead of copying them.
fn example(e: ExampleRecord) -> pb::Example {
    pb::Example {
        max_activation: e.max_activation,
        max_position: e.max_position,
        token_ids: e.token_ids,
        tokens: e.tokens,
        activations: e.activations,
        document_id: e.document_id,
        document_offset: e.document_offset,
        window: e.window,
    }
}

/// The dashboard: statistics, logit effects, neighbours and (at most `max_top` /
/// `max_interval` per interval, 0 = all) examples.
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

pub fn dashboard(feature: &FeatureRecord, hook: &str, examples: Vec<ExampleRecord>, max_top: usize, max_interval: usize) -> pb::FeatureDashboard {
    let mut top_examples = Vec::new();
    let mut interval_examples: Vec<pb::IntervalExamples> = Vec::new();
    for e in examples {
        match e.kind {
            ExampleKind::Top if max_top == 0 || top_examples.len() < max_top => top_examples.push(example(e)),
            ExampleKind::Top => {}
            ExampleKind::Interval { low, high, .. } => {
                if interval_examples.last().is_none_or(|i| i.low != low) {
                    interval_examples.push(pb::IntervalExamples { low, high, examples: Vec::new() });
                }
                let interval = interval_examples.last_mut().expect("pushed above");
                if max_interval == 0 || interval.examples.len() < max_interval {
                    interval.examples.push(example(e));
                }
            }
        }
    }
    pb::FeatureDashboard {
        feature: feature_ref(&feature.dictionary_id, feature.feature),
        label: feature.label.clone(),
        max_activation: feature.max_activation,
        mean_activation: feature.mean_activation,
        density: feature.density,
        fire_count: feature.fire_count,
        histogram: Some(pb::Histogram { bin_width: feature.histogram_width, counts: feature.histogram_counts.clone() }),
        top_logits: logits(&feature.top_logits),
        bottom_logits: logits(&feature.bottom_logits),
        neighbours: feature.neighbours.iter().map(|n| pb::Neighbour { feature: feature_ref(&feature.dictionary_id, n.feature), cosine: n.cosine }).collect(),
        decoder_norm: feature.decoder_norm,
        top_examples,
        interval_examples,
        hook: hook.to_string(),
    }
}
