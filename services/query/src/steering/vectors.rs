//! Named vectors: DiffMean contrast vectors made from texts (or given values), stored in the
//! store's append-only `vectors` table with their provenance.

use std::time::Duration;

use loupe_engine::{HookPoint, Hooks};
use loupe_indexer::checksum::sha256_bytes;
use loupe_schema::proto::v1 as pb;
use loupe_store::NamedVector;
use serde_json::json;

use crate::error::{Result, ServiceError};
use crate::rpc::{author_of, check_text, tokens_of};
use crate::state::AppState;

pub async fn create(state: &AppState, r: pb::CreateVectorRequest, deadline: Option<Duration>) -> Result<pb::CreateVectorResponse> {
    let lens = state.engine()?;
    let limits = state.limits;
    loupe_store::named_vectors::check_name(&r.name).map_err(|e| ServiceError::InvalidArgument(format!("name: {e}")))?;
    let author = author_of(r.author.as_deref())?;
    if r.description.len() > 1024 || r.description.chars().any(char::is_control) {
        return Err(ServiceError::InvalidArgument("description must be one line of at most 1024 bytes".into()));
    }
    let hook: HookPoint = r.hook.parse().map_err(|e| ServiceError::InvalidArgument(format!("hook: {e}")))?;
    let config = lens.model().config();
    let width =
        config.hook_width(hook).ok_or_else(|| ServiceError::InvalidArgument(format!("hook: {hook} is past the model's depth: it has {} layers (0..={})", config.n_layers, config.n_layers - 1)))?;
    if !r.replace && loupe_store::named_vector(&state.store_root, &r.name).await?.is_some() {
        return Err(ServiceError::AlreadyExists(format!("a vector named {:?} exists: delete it or set replace", r.name)));
    }
    let model_checksum = state.model_checksum.clone().unwrap_or_default();
    let (direction, provenance) = if !r.values.is_empty() {
        if !r.positive.is_empty() || !r.negative.is_empty() {
            return Err(ServiceError::InvalidArgument("give values, or positive and negative texts, not both".into()));
        }
        if r.values.len() != width {
            return Err(ServiceError::InvalidArgument(format!("values has {} numbers, but {hook} has width {width}", r.values.len())));
        }
        if r.values.iter().any(|v| !v.is_finite()) || r.values.iter().all(|v| *v == 0.0) {
            return Err(ServiceError::InvalidArgument("values must be finite and not all zero".into()));
        }
        (r.values.clone(), json!({"method": "given", "description": r.description, "hook": hook.to_string(), "model": model_checksum}))
    } else {
        for (side, texts) in [("positive", &r.positive), ("negative", &r.negative)] {
            if texts.is_empty() {
                return Err(ServiceError::InvalidArgument(format!("{side} is empty: give texts on both sides (or values)")));
            }
            if texts.len() > limits.max_vector_texts {
                return Err(ServiceError::InvalidArgument(format!("{side} has {} texts; at most {} per side (max_vector_texts)", texts.len(), limits.max_vector_texts)));
            }
            for (i, text) in texts.iter().enumerate() {
                check_text(text, &limits).map_err(|e| ServiceError::InvalidArgument(format!("{side}[{i}]: {e}")))?;
            }
        }
        let tokenizer = lens.model().tokenizer()?;
        let tokenize = |texts: &[String]| -> Result<Vec<Vec<u32>>> { texts.iter().map(|t| tokens_of(t, &[], tokenizer, &limits, true)).collect() };
        let (positive, negative) = (tokenize(&r.positive)?, tokenize(&r.negative)?);
        crate::access::charge_model_tokens(positive.iter().chain(&negative).map(Vec::len).sum());
        let work = lens.clone();
        let contrast = state.workers.run(deadline, move |cancel| Ok(loupe_engine::steering::diffmean(work.model(), hook, &positive, &negative, &Hooks::new().cancel_when(cancel))?)).await?;
        let (pos_tokens, neg_tokens) = (contrast.positive_tokens, contrast.negative_tokens);
        let direction = contrast.direction;
        let digest = |texts: &[String]| sha256_bytes(texts.join("\u{1e}").as_bytes());
        let provenance = json!({
            "method": "diffmean",
            "rule": "mean activation over the positive texts' tokens minus the mean over the negative texts' tokens (BOS excluded)",
            "description": r.description,
            "hook": hook.to_string(),
            "model": model_checksum,
            "positive": {"texts": r.positive.len(), "tokens": pos_tokens, "sha256": digest(&r.positive)},
            "negative": {"texts": r.negative.len(), "tokens": neg_tokens, "sha256": digest(&r.negative)},
        });
        (direction, provenance)
    };
    let record = NamedVector::now(&r.name, &model_checksum, &hook.to_string(), Some(direction), provenance, &author);
    loupe_store::append_vector(&state.store_root, &record).await?;
    Ok(pb::CreateVectorResponse { vector: Some(info(&record)) })
}

pub async fn list(state: &AppState) -> Result<pb::ListVectorsResponse> {
    let vectors = loupe_store::named_vectors(&state.store_root).await?;
    Ok(pb::ListVectorsResponse { vectors: vectors.values().map(info).collect() })
}

pub async fn delete(state: &AppState, r: pb::DeleteVectorRequest) -> Result<pb::DeleteVectorResponse> {
    loupe_store::named_vectors::check_name(&r.name).map_err(|e| ServiceError::InvalidArgument(format!("name: {e}")))?;
    let author = author_of(r.author.as_deref())?;
    let existing = loupe_store::named_vector(&state.store_root, &r.name).await?.ok_or_else(|| ServiceError::NotFound(format!("no vector named {:?} in the store", r.name)))?;
    let tombstone = NamedVector::now(&r.name, &existing.model_checksum, &existing.hook, None, json!({"method": "deleted"}), &author);
    loupe_store::append_vector(&state.store_root, &tombstone).await?;
    Ok(pb::DeleteVectorResponse {})
}

fn info(v: &NamedVector) -> pb::VectorInfo {
    let direction = v.direction.as_deref().unwrap_or_default();
    pb::VectorInfo {
        name: v.name.clone(),
        hook: v.hook.clone(),
        width: direction.len() as u32,
        norm: direction.iter().map(|x| x * x).sum::<f32>().sqrt(),
        provenance_json: v.provenance.to_string(),
        author: v.author.clone(),
        created_at: loupe_store::layout::rfc3339((v.created_at_us.max(0) / 1_000_000) as u64),
        model_checksum: v.model_checksum.clone(),
    }
}
