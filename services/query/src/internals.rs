//! The Internals service: tokenization and activations at hook points.

use std::sync::Arc;
use std::time::Duration;

use loupe_engine::{HookPoint, Hooks, Read, Rows, TokenBatch};
use loupe_schema::proto::v1 as pb;

use crate::error::{Result, ServiceError};
use crate::rpc::tokens_of;
use crate::state::AppState;

pub struct InternalsService {
    pub state: Arc<AppState>,
}

impl InternalsService {
    pub async fn tokenize(&self, r: pb::TokenizeRequest) -> Result<pb::TokenizeResponse> {
        let state = &self.state;
        let engine = state.engine()?;
        let tokenizer = engine.model().tokenizer()?;
        let token_ids = tokens_of(&r.text, &[], tokenizer, &state.limits, r.add_bos.unwrap_or(true))?;
        let tokens = tokenizer.token_strings(&token_ids)?;
        Ok(pb::TokenizeResponse { token_ids, tokens })
    }

    pub async fn get_activations(&self, r: pb::GetActivationsRequest, deadline: Option<Duration>) -> Result<pb::GetActivationsResponse> {
        let state = &self.state;
        let engine = state.engine()?;
        if r.hooks.is_empty() {
            return Err(ServiceError::InvalidArgument("no hooks: name at least one, e.g. blocks.9.hook_resid_post".into()));
        }
        if r.hooks.len() > state.limits.max_hooks {
            return Err(ServiceError::ResourceExhausted(format!("{} hooks asked; at most {} per call", r.hooks.len(), state.limits.max_hooks)));
        }
        let hooks: Vec<HookPoint> = r.hooks.iter().map(|h| h.parse::<HookPoint>()).collect::<Result<_, _>>().map_err(loupe_engine::EngineError::from)?;
        let capture = Hooks::new().capture_all(hooks.iter().copied());
        capture.validate(engine.model().config().n_layers)?;
        let tokens = tokens_of(&r.text, &r.token_ids, engine.model().tokenizer()?, &state.limits, true)?;
        crate::access::charge_model_tokens(tokens.len());
        let work_tokens = tokens.clone();
        let tensors = state
            .workers
            .run(deadline, move |cancel| {
                let read = Read { hooks: capture.cancel_when(cancel), ..Read::only(Vec::new(), Rows::All) };
                let out = engine.run(&TokenBatch::single(&work_tokens)?, &read)?;
                let mut tensors = Vec::new();
                for (hook, name) in hooks.iter().zip(&r.hooks) {
                    let x = &out.captured[hook];
                    let shape: Vec<u64> = x.dims().iter().map(|&d| d as u64).collect();
                    let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
                    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    tensors.push(pb::Tensor { hook: name.clone(), shape, data });
                }
                Ok(tensors)
            })
            .await?;
        Ok(pb::GetActivationsResponse { token_ids: tokens, tensors })
    }
}
