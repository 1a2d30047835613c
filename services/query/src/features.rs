//! The Features service: search, dashboards, similar features, features of a text, labels.

use std::sync::Arc;
use std::time::Duration;

use loupe_engine::{Hooks, Read, Rows, SparseActs, TokenBatch};
use loupe_schema::proto::v1 as pb;
use loupe_store::dashboards;
use loupe_store::vectors::Search;
use loupe_store::{LabelRecord, SearchFilter, SearchPage};
use prost::bytes::Bytes;
use prost::Message;

use crate::convert;
use crate::error::{Result, ServiceError};
use crate::response_cache::{DashboardKey, SearchKey};
use crate::rpc::{author_of, tokens_of};
use crate::state::AppState;

pub struct FeaturesService {
    pub state: Arc<AppState>,
}

fn feature_of(feature: Option<pb::FeatureRef>) -> Result<pb::FeatureRef> {
    let f = feature.ok_or_else(|| ServiceError::InvalidArgument("feature is missing: give {dictionary_id, feature}".into()))?;
    if f.dictionary_id.is_empty() {
        return Err(ServiceError::InvalidArgument("feature.dictionary_id is empty".into()));
    }
    Ok(f)
}

impl FeaturesService {
    pub async fn list_dictionaries(&self, _: pb::ListDictionariesRequest) -> Result<pb::ListDictionariesResponse> {
        let state = &self.state;
        let snapshot = state.snapshot();
        let loaded = |id: &str| state.engine.as_ref().is_some_and(|e| e.position(id).is_some());
        Ok(pb::ListDictionariesResponse {
            dictionaries: snapshot.dictionaries.values().map(|d| convert::dictionary(d, loaded(&d.dictionary_id))).collect(),
            store_generation: snapshot.reader.generation().generation,
        })
    }

    pub async fn search_features(&self, r: pb::SearchFeaturesRequest) -> Result<pb::SearchFeaturesResponse> {
        let state = &self.state;
        if r.query.trim().is_empty() {
            return Err(ServiceError::InvalidArgument("query is empty: give words to search for, e.g. \"king\" or \"united st*\"".into()));
        }
        if r.query.len() > state.limits.max_text_bytes {
            return Err(ServiceError::ResourceExhausted(format!("query is {} bytes; at most {} are accepted", r.query.len(), state.limits.max_text_bytes)));
        }
        let max_page = state.limits.max_page;
        let limit = if r.limit == 0 { state.limits.default_search_limit } else { r.limit as usize };
        if limit > max_page {
            return Err(ServiceError::InvalidArgument(format!("limit {limit} is too large: at most {max_page} hits per page")));
        }
        let snapshot = state.snapshot();
        if let Some(id) = &r.dictionary_id {
            snapshot.dictionary(id)?;
        }
        crate::rpc::check_density_range(r.min_density, r.max_density)?;
        let offset = r.offset as usize;
        let key = SearchKey {
            generation: snapshot.reader.generation().generation,
            labels_version: snapshot.reader.labels_version(),
            query: r.query.clone(),
            dictionary_id: r.dictionary_id.clone(),
            hook: r.hook.clone(),
            layer: r.layer,
            min_density: r.min_density.map(f64::to_bits),
            max_density: r.max_density.map(f64::to_bits),
            offset,
            limit,
        };
        if let Some(answer) = state.searches.get(&key) {
            return Ok(answer);
        }
        let filter = SearchFilter { dictionary_id: r.dictionary_id, hook: r.hook, layer: r.layer, min_density: r.min_density, max_density: r.max_density };
        let page = SearchPage { offset, limit, exact_total_up_to: state.limits.search_exact_total };
        let results = state.request_threads.run(move || Ok(snapshot.reader.search_page(&r.query, &filter, page)?)).await?;
        let answer = pb::SearchFeaturesResponse {
            total: results.total as u64,
            total_is_estimate: results.total_is_estimate,
            hits: results
                .hits
                .into_iter()
                .map(|h| pb::SearchHit {
                    feature: convert::feature_ref(&h.dictionary_id, h.feature),
                    score: h.score,
                    label: h.label,
                    max_activation: h.max_activation,
                    density: h.density,
                    snippet: h.snippet,
                    highlights: h.highlights.into_iter().map(|r| pb::Range { start: r.start as u32, end: r.end as u32 }).collect(),
                })
                .collect(),
            encoded: None,
        };
        // Encoded once, cached so, and sent as those bytes on every hit.
        let answer = answer.into_encoded();
        state.searches.insert(key, &answer);
        Ok(answer)
    }

    pub async fn get_feature(&self, r: pb::GetFeatureRequest) -> Result<pb::GetFeatureResponse> {
        let state = &self.state;
        let f = feature_of(r.feature)?;
        let snapshot = state.snapshot();
        let dictionary = snapshot.check_feature(&f.dictionary_id, f.feature)?;
        let parts = r.include.unwrap_or(pb::DashboardParts { top_examples: true, interval_examples: true, histogram: true, logits: true, neighbours: true });
        let key = DashboardKey {
            generation: snapshot.reader.generation().generation,
            dictionary_id: f.dictionary_id.clone(),
            feature: f.feature,
            max_top_examples: r.max_top_examples,
            max_interval_examples: r.max_interval_examples,
            parts: [parts.top_examples, parts.interval_examples, parts.histogram, parts.logits, parts.neighbours],
        };
        // Dashboards travel encoded: as the store keeps them, or encoded once here, and
        // cached so. Labels written since the generation are applied on the way out.
        let label = |encoded: Bytes| -> Result<pb::GetFeatureResponse> {
            Ok(pb::GetFeatureResponse::encoded(match snapshot.reader.label_override(&f.dictionary_id, f.feature) {
                None => encoded,
                label => Bytes::from(dashboards::with_label(encoded.to_vec(), label)?),
            }))
        };
        if let Some(cached) = state.dashboards.get(&key).and_then(|c| c.encoded) {
            return label(cached);
        }
        // Examples are most of a dashboard's bytes: not read when no example is asked for.
        let wants_examples = parts.top_examples || parts.interval_examples;
        // Whole or without its examples, no limits: the stored bytes are the answer.
        let as_stored = parts.top_examples == parts.interval_examples && parts.histogram && parts.logits && parts.neighbours && r.max_top_examples == 0 && r.max_interval_examples == 0;
        let stored = match as_stored {
            true => snapshot.reader.stored_dashboard(&f.dictionary_id, f.feature, wants_examples).await?,
            false => None,
        };
        let encoded = match stored {
            Some(bytes) => Bytes::from(bytes),
            None => {
                let dashboard = snapshot.reader.dashboard(&f.dictionary_id, f.feature, &dictionary.hook, wants_examples).await?;
                let mut dashboard = dashboard.ok_or_else(|| ServiceError::NotFound(format!("feature {} of {:?} is not in the store", f.feature, f.dictionary_id)))?;
                dashboards::limit_examples(&mut dashboard, r.max_top_examples as usize, r.max_interval_examples as usize);
                convert::keep_parts(&mut dashboard, &parts);
                Bytes::from(dashboard.encode_to_vec())
            }
        };
        state.dashboards.insert(key, &pb::GetFeatureResponse::encoded(encoded.clone()));
        label(encoded)
    }

    pub async fn similar_features(&self, r: pb::SimilarFeaturesRequest) -> Result<pb::SimilarFeaturesResponse> {
        let state = &self.state;
        let f = feature_of(r.feature)?;
        let snapshot = state.snapshot();
        let source = snapshot.check_feature(&f.dictionary_id, f.feature)?.clone();
        let k = if r.k == 0 { state.limits.default_similar_k } else { r.k as usize };
        if k > state.limits.max_page {
            return Err(ServiceError::InvalidArgument(format!("k {k} is too large: at most {}", state.limits.max_page)));
        }
        let targets = if r.dictionary_ids.is_empty() { vec![f.dictionary_id.clone()] } else { r.dictionary_ids.clone() };
        for target in &targets {
            let record = snapshot.dictionary(target)?;
            if record.model_checksum != source.model_checksum || record.d_in != source.d_in {
                return Err(ServiceError::InvalidArgument(format!(
                    "dictionary {target:?} reads another model or width than {:?}; decoder cosines compare only dictionaries of the same model and width",
                    f.dictionary_id
                )));
            }
        }
        let feature = snapshot.reader.feature(&f.dictionary_id, f.feature).await?;
        let feature = feature.ok_or_else(|| ServiceError::NotFound(format!("feature {} of {:?} is not in the store", f.feature, f.dictionary_id)))?;
        let target_refs: Vec<&str> = targets.iter().map(String::as_str).collect();
        // One more than asked: the feature itself is its own nearest neighbour.
        let mut found = snapshot.reader.similar(&feature.decoder, &target_refs, k + 1, Search::Quantized).await?;
        found.retain(|n| !(n.dictionary_id == f.dictionary_id && n.feature == f.feature));
        found.truncate(k);
        Ok(pb::SimilarFeaturesResponse { neighbours: found.into_iter().map(|n| pb::Neighbour { feature: convert::feature_ref(&n.dictionary_id, n.feature), cosine: n.cosine }).collect() })
    }

    pub async fn top_features_for_text(&self, r: pb::TopFeaturesForTextRequest, deadline: Option<Duration>) -> Result<pb::TopFeaturesForTextResponse> {
        let state = &self.state;
        let engine = state.engine()?;
        let snapshot = state.snapshot();
        let ids: Vec<String> = if r.dictionary_ids.is_empty() { engine.dictionaries().iter().map(|d| d.id.clone()).collect() } else { r.dictionary_ids.clone() };
        if ids.is_empty() {
            return Err(ServiceError::Unavailable("no dictionary of the store can run on this server's model".into()));
        }
        for id in &ids {
            snapshot.dictionary(id)?;
            if engine.position(id).is_none() {
                return Err(ServiceError::Unavailable(format!("dictionary {id:?} is in the store but its files are not loaded on this server (start it with --dictionary {id}=DIR)")));
            }
        }
        let tokens = tokens_of(&r.text, &r.token_ids, engine.model().tokenizer()?, &state.limits, true)?;
        crate::access::charge_model_tokens(tokens.len());
        let k = if r.k == 0 { state.limits.default_token_features } else { r.k as usize };
        let k_text = if r.k_text == 0 { state.limits.default_text_features } else { r.k_text as usize };
        let ignore_bos = r.ignore_bos.unwrap_or(true);
        crate::rpc::check_density(r.max_density, "max_density")?;
        let max_density = r.max_density;
        let work_engine = engine.clone();
        let work_tokens = tokens.clone();
        let read = Read::only(ids.iter().filter_map(|id| engine.position(id)).collect(), Rows::All);
        // Per dictionary: the sparse code of every token.
        let codes: Vec<SparseActs> = state
            .workers
            .run(deadline, move |cancel| {
                let read = Read { hooks: Hooks::new().cancel_when(cancel), ..read };
                let out = work_engine.run(&TokenBatch::single(&work_tokens)?, &read)?;
                Ok(out.codes.into_iter().map(|e| e.features).collect())
            })
            .await?;
        let tokenizer = engine.model().tokenizer()?;
        let mut per_token: Vec<Vec<(f32, usize, u32)>> = vec![Vec::new(); tokens.len()];
        let mut text_max: std::collections::HashMap<(usize, u32), f32> = std::collections::HashMap::new();
        for (d, code) in codes.iter().enumerate() {
            let notes = snapshot.feature_notes.get(&ids[d]);
            for (position, slot) in per_token.iter_mut().enumerate() {
                let (indices, values) = code.token(position);
                for (&feature, &value) in indices.iter().zip(values) {
                    let too_dense = max_density.is_some_and(|m| notes.and_then(|n| n.density.get(feature as usize)).is_some_and(|&density| density > m));
                    if value <= 0.0 || too_dense {
                        continue;
                    }
                    slot.push((value, d, feature));
                    if !(ignore_bos && position == 0) {
                        let best = text_max.entry((d, feature)).or_insert(value);
                        *best = best.max(value);
                    }
                }
            }
        }
        let label = |d: usize, feature: u32| snapshot.label(&ids[d], feature);
        let activation = |value: f32, d: usize, feature: u32| pb::FeatureActivation { feature: convert::feature_ref(&ids[d], feature), activation: value, label: label(d, feature) };
        let order = |a: &(f32, usize, u32), b: &(f32, usize, u32)| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2)));
        let mut response_tokens = Vec::new();
        for (position, mut features) in per_token.into_iter().enumerate() {
            if ignore_bos && position == 0 && r.token_ids.is_empty() {
                continue;
            }
            features.sort_by(order);
            features.truncate(k);
            response_tokens.push(pb::TokenFeatures {
                position: position as u32,
                token_id: tokens[position],
                token: tokenizer.decode(&[tokens[position]])?,
                features: features.into_iter().map(|(v, d, f)| activation(v, d, f)).collect(),
            });
        }
        let mut text: Vec<(f32, usize, u32)> = text_max.into_iter().map(|((d, f), v)| (v, d, f)).collect();
        text.sort_by(order);
        text.truncate(k_text);
        Ok(pb::TopFeaturesForTextResponse { tokens: response_tokens, text_features: text.into_iter().map(|(v, d, f)| activation(v, d, f)).collect() })
    }

    pub async fn set_feature_label(&self, r: pb::SetFeatureLabelRequest) -> Result<pb::SetFeatureLabelResponse> {
        let state = &self.state;
        let f = feature_of(r.feature)?;
        let snapshot = state.snapshot();
        snapshot.check_feature(&f.dictionary_id, f.feature)?;
        let label = r.label.trim();
        loupe_store::labels::check_label(label)?;
        let author = author_of(r.author.as_deref())?;
        let record = LabelRecord::now(&f.dictionary_id, f.feature, (!label.is_empty()).then(|| label.to_string()), &author);
        state.labels.write(vec![record]).await?;
        // Read this server's own write before answering (others see it within a poll).
        snapshot.reader.refresh_labels().await?;
        Ok(pb::SetFeatureLabelResponse { store_generation: snapshot.reader.generation().generation })
    }
}
