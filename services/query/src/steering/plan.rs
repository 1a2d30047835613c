//! A Steer request checked once and resolved into what the engine runs: the prompt's
//! tokens, the edits with raw strengths, the sampling parameters and the rows of the batch.

use std::sync::Arc;
use std::time::Duration;

use loupe_engine::chat::{self, ChatMessage};
use loupe_engine::generate::SamplingParams;
use loupe_engine::steering::{Edit, Operation, Positions, Target};
use loupe_engine::{Dictionary, FeatureLens, HookPoint, Hooks, Read, Rows, TokenBatch};
use loupe_schema::proto::v1 as pb;

use crate::error::{Result, ServiceError};
use crate::monitoring::score::{chosen_monitors, read_spec};
use crate::monitoring::{LiveMonitor, ReadSpec};
use crate::rpc::check_text;
use crate::state::AppState;

/// Most stop strings per call, and longest one in bytes.
const MAX_STOP_STRINGS: usize = 8;
const MAX_STOP_BYTES: usize = 256;

/// A feature whose activation each generated token reports.
pub struct Watched {
    pub dictionary_id: String,
    pub feature: u32,
    pub dictionary: Arc<Dictionary>,
    pub label: Option<String>,
}

/// What one row of the generation batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    Default,
    Steered,
}

impl RowKind {
    pub fn output(self) -> pb::Output {
        match self {
            RowKind::Default => pb::Output::Default,
            RowKind::Steered => pb::Output::Steered,
        }
    }
}

pub struct SteerPlan {
    pub prompt_text: String,
    pub prompt: Vec<u32>,
    pub edits: Vec<Edit>,
    pub applied: Vec<pb::AppliedIntervention>,
    pub watched: Vec<Watched>,
    pub params: SamplingParams,
    pub rows: Vec<RowKind>,
    pub stop: Vec<String>,
    pub logprobs: bool,
    /// Guardrail monitors run on the generated tokens, and what they read.
    pub guards: Vec<Arc<LiveMonitor>>,
    pub guard_reads: ReadSpec,
    /// Who asked (recorded on guardrail alerts).
    pub caller: String,
}

impl SteerPlan {
    /// The hooks of a generation step: the edits, and captures of the watched features'
    /// input hooks.
    pub fn hooks(&self, lens: &FeatureLens) -> Hooks {
        let guard_hooks = self.guard_reads.hooks.iter().copied().chain(self.guard_reads.dictionaries.iter().map(|&at| lens.dictionaries()[at].dictionary.info().hook_in));
        let captures = Hooks::new().capture_all(self.watched.iter().map(|w| w.dictionary.info().hook_in)).capture_all(guard_hooks);
        loupe_engine::steering::with_edits(captures, &self.edits)
    }
}

/// Checks `r` and resolves it against the server's model, store and limits.
pub async fn plan(state: &AppState, r: pb::SteerRequest, deadline: Option<Duration>) -> Result<SteerPlan> {
    let lens = state.engine()?;
    let limits = &state.limits;
    let tokenizer = lens.model().tokenizer()?;
    let prompt_text = prompt_text(&r, tokenizer.chat_template())?;
    check_text(&prompt_text, limits)?;
    let prompt = tokenizer.encode(&prompt_text)?;
    if prompt.len() > limits.max_tokens {
        return Err(ServiceError::InvalidArgument(format!("the prompt is {} tokens; this server runs at most {} (max_tokens)", prompt.len(), limits.max_tokens)));
    }
    let max_new_tokens = match r.max_new_tokens as usize {
        0 => limits.default_new_tokens,
        n if n > limits.max_new_tokens => return Err(ServiceError::InvalidArgument(format!("max_new_tokens {n} is above this server's limit of {}", limits.max_new_tokens))),
        n => n,
    };
    if !(r.temperature.is_finite() && r.temperature >= 0.0) {
        return Err(ServiceError::InvalidArgument(format!("temperature is {}: give a finite number >= 0 (0 = greedy)", r.temperature)));
    }
    let top_p = r.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ServiceError::InvalidArgument(format!("top_p is {top_p}: give a number in (0, 1]")));
    }
    if r.stop.len() > MAX_STOP_STRINGS {
        return Err(ServiceError::InvalidArgument(format!("{} stop strings given; at most {MAX_STOP_STRINGS}", r.stop.len())));
    }
    if let Some((i, _)) = r.stop.iter().enumerate().find(|(_, s)| s.is_empty() || s.len() > MAX_STOP_BYTES) {
        return Err(ServiceError::InvalidArgument(format!("stop[{i}] must be 1 to {MAX_STOP_BYTES} bytes")));
    }
    let output = pb::Output::try_from(r.output).map_err(|_| ServiceError::InvalidArgument(format!("output {} is not one of BOTH, STEERED, DEFAULT", r.output)))?;
    if r.interventions.len() > limits.max_interventions {
        return Err(ServiceError::InvalidArgument(format!("{} interventions given; this server applies at most {} per call (max_interventions)", r.interventions.len(), limits.max_interventions)));
    }
    if r.interventions.is_empty() && output != pb::Output::Default {
        return Err(ServiceError::InvalidArgument("interventions is empty: give at least one (or ask for output DEFAULT only)".into()));
    }
    let rows = match output {
        pb::Output::Both => vec![RowKind::Default, RowKind::Steered],
        pb::Output::Steered => vec![RowKind::Steered],
        pb::Output::Default => vec![RowKind::Default],
    };
    let steered_rows: Vec<usize> = rows.iter().enumerate().filter(|(_, k)| **k == RowKind::Steered).map(|(i, _)| i).collect();
    let mut resolver = Resolver { state, lens: &lens, prompt: &prompt, deadline, watched: Vec::new() };
    let mut edits = Vec::new();
    let mut applied = Vec::new();
    for (i, intervention) in r.interventions.iter().enumerate() {
        let (mut edit, described) = resolver.resolve(i, intervention).await?;
        applied.push(described);
        edit.rows = Some(steered_rows.clone());
        edits.push(edit);
    }
    let watched = resolver.watched;
    let params = SamplingParams { temperature: r.temperature, top_p, seed: r.seed, max_new_tokens, stop_tokens: tokenizer.eos_token_id().into_iter().collect() };
    let mut names = r.monitors.clone();
    names.sort();
    names.dedup();
    let guards = if names.is_empty() {
        Vec::new()
    } else {
        chosen_monitors(state, &names).map_err(|e| match e {
            ServiceError::NotFound(m) => ServiceError::NotFound(format!("monitors: {m}")),
            other => other,
        })?
    };
    let guard_reads = read_spec(&lens, &guards)?;
    // Each row runs the prompt and up to max_new_tokens more.
    crate::access::charge_model_tokens(rows.len() * (prompt.len() + max_new_tokens));
    let caller = crate::rpc::caller_of(None, "caller")?;
    Ok(SteerPlan { prompt_text, prompt, edits, applied, watched, params, rows, stop: r.stop, logprobs: r.logprobs, guards, guard_reads, caller })
}

/// The text to run: the raw prompt, or the chat messages rendered with the model's template
/// (assistant turn opened).
fn prompt_text(r: &pb::SteerRequest, template: Option<&str>) -> Result<String> {
    match (r.prompt.is_empty(), r.messages.is_empty()) {
        (false, true) => Ok(r.prompt.clone()),
        (true, false) => {
            let mut messages = Vec::with_capacity(r.messages.len());
            for (i, m) in r.messages.iter().enumerate() {
                if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                    return Err(ServiceError::InvalidArgument(format!("messages[{i}].role is {:?}: give system, user or assistant", m.role)));
                }
                messages.push(ChatMessage::new(m.role.clone(), m.content.clone()));
            }
            Ok(chat::render(template, &messages, true)?)
        }
        (true, true) => Err(ServiceError::InvalidArgument("the prompt is empty: give prompt (raw text) or messages (chat)".into())),
        (false, false) => Err(ServiceError::InvalidArgument("give prompt or messages, not both".into())),
    }
}

struct Resolver<'a> {
    state: &'a AppState,
    lens: &'a Arc<FeatureLens>,
    prompt: &'a [u32],
    deadline: Option<Duration>,
    watched: Vec<Watched>,
}

impl Resolver<'_> {
    /// The edit an intervention asks for, with its strengths converted to raw units.
    async fn resolve(&mut self, i: usize, iv: &pb::Intervention) -> Result<(Edit, pb::AppliedIntervention)> {
        let field = |name: &str| format!("interventions[{i}].{name}");
        let bad = |message: String| ServiceError::InvalidArgument(message);
        let operation = pb::Operation::try_from(iv.operation).map_err(|_| bad(format!("{} {} is not an operation", field("operation"), iv.operation)))?;
        let unit = pb::Unit::try_from(iv.unit).map_err(|_| bad(format!("{} {} is not a unit", field("unit"), iv.unit)))?;
        for (name, value) in [("strength", iv.strength), ("cap_low", iv.cap_low), ("cap_high", iv.cap_high)] {
            if !value.is_finite() {
                return Err(bad(format!("{} is {value}: give a finite number", field(name))));
            }
        }
        let config = self.lens.model().config();
        let (target, description, max_activation) = match &iv.target {
            Some(pb::intervention::Target::Feature(f)) => {
                let snapshot = self.state.snapshot();
                snapshot.check_feature(&f.dictionary_id, f.feature)?;
                let dictionary = self.lens.dictionary(&f.dictionary_id).cloned().ok_or_else(|| {
                    ServiceError::FailedPrecondition(format!(
                        "dictionary {:?} is in the store but not loaded on this server: start `loupe serve` with --dictionary {}=DIR",
                        f.dictionary_id, f.dictionary_id
                    ))
                })?;
                let max_activation = if unit == pb::Unit::MaxActivation {
                    let record = snapshot.reader.feature(&f.dictionary_id, f.feature).await?;
                    let max = record.map_or(0.0, |r| r.max_activation);
                    if !(max > 0.0) {
                        return Err(bad(format!("{}: feature {}/{} never fired in the indexed corpus, so it has no max activation: use UNIT_RAW", field("unit"), f.dictionary_id, f.feature)));
                    }
                    Some(max)
                } else {
                    None
                };
                if !self.watched.iter().any(|w| w.dictionary_id == f.dictionary_id && w.feature == f.feature) {
                    let label = snapshot.label(&f.dictionary_id, f.feature);
                    self.watched.push(Watched { dictionary_id: f.dictionary_id.clone(), feature: f.feature, dictionary: dictionary.clone(), label });
                }
                (Target::Feature { dictionary, feature: f.feature }, format!("{}/{}", f.dictionary_id, f.feature), max_activation)
            }
            Some(pb::intervention::Target::Vector(v)) => {
                let hook = self.hook(&field("vector.hook"), &v.hook)?;
                let width = config.hook_width(hook).unwrap_or(0);
                if v.values.len() != width {
                    return Err(bad(format!("{} has {} values, but {hook} has width {width}", field("vector.values"), v.values.len())));
                }
                (Target::Vector { hook, direction: v.values.clone() }, format!("vector at {hook}"), None)
            }
            Some(pb::intervention::Target::VectorName(name)) => {
                let stored = loupe_store::named_vector(&self.state.store_root, name)
                    .await?
                    .ok_or_else(|| ServiceError::NotFound(format!("{}: no vector named {name:?} in the store (see ListVectors)", field("vector_name"))))?;
                if self.state.model_checksum.as_deref() != Some(stored.model_checksum.as_str()) {
                    return Err(ServiceError::FailedPrecondition(format!("vector {name:?} was computed on another model than this server runs")));
                }
                let hook = self.hook(&field("vector_name"), &stored.hook)?;
                (Target::Vector { hook, direction: stored.direction.unwrap_or_default() }, format!("vector {name}"), None)
            }
            None => return Err(bad(format!("{} is missing: give feature, vector or vector_name", field("target")))),
        };
        if max_activation.is_none() && unit == pb::Unit::MaxActivation {
            return Err(bad(format!("{}: UNIT_MAX_ACTIVATION needs a dictionary feature; give vectors in UNIT_RAW or UNIT_RESIDUAL_NORM", field("unit"))));
        }
        let hook_of_target = match &target {
            Target::Feature { dictionary, .. } => dictionary.info().hook_out,
            Target::Vector { hook, .. } => *hook,
        };
        let residual_norm = if unit == pb::Unit::ResidualNorm { Some(self.residual_norm(hook_of_target).await?) } else { None };
        let direction_norm = match &target {
            Target::Feature { dictionary, feature } => norm(dictionary.decoder_row(*feature as usize)),
            Target::Vector { direction, .. } => norm(direction),
        };
        // Operations on d (ADD, CLAMP) and on d̂ (ORTHOGONAL, CAP) scale differently.
        let scale = Scale { unit, max_activation, residual_norm, direction_norm };
        let engine_operation = match operation {
            pb::Operation::Unspecified => return Err(bad(format!("{} is unspecified: give ADD, CLAMP, ABLATE, ORTHOGONAL or CAP", field("operation")))),
            pb::Operation::Add => Operation::Add { strength: scale.along_d(iv.strength) },
            pb::Operation::Clamp => Operation::Clamp { value: scale.along_d(iv.strength) },
            pb::Operation::Ablate => Operation::Ablate,
            pb::Operation::Orthogonal => Operation::Orthogonal { strength: scale.along_unit(iv.strength) },
            pb::Operation::Cap => {
                if iv.cap_low > iv.cap_high {
                    return Err(bad(format!("{} [{}, {}] is inverted: give cap_low <= cap_high", field("cap_low/cap_high"), iv.cap_low, iv.cap_high)));
                }
                Operation::Cap { lo: scale.along_unit(iv.cap_low), hi: scale.along_unit(iv.cap_high) }
            }
        };
        let prompt_len = self.prompt.len();
        let positions_kind = pb::Positions::try_from(iv.positions).map_err(|_| bad(format!("{} {} is not a position set", field("positions"), iv.positions)))?;
        let positions = match positions_kind {
            pb::Positions::All => Positions::All,
            pb::Positions::Prompt => Positions::Prompt { prompt_len },
            pb::Positions::Generated => Positions::Generated { prompt_len },
            pb::Positions::Ranges => {
                if let Some((j, range)) = iv.ranges.iter().enumerate().find(|(_, r)| r.start >= r.end) {
                    return Err(bad(format!("{}[{j}] [{}, {}) is empty or inverted: give start < end", field("ranges"), range.start, range.end)));
                }
                Positions::Ranges(iv.ranges.iter().map(|r| r.start as usize..r.end as usize).collect())
            }
        };
        let mut edit = Edit::new(target, engine_operation, positions).map_err(|e| bad(format!("interventions[{i}]: {e}")))?;
        if !iv.include_special_tokens {
            let tokenizer = self.lens.model().tokenizer()?;
            edit.skip = self.prompt.iter().enumerate().filter(|(_, &t)| tokenizer.is_special(t)).map(|(p, _)| p).collect();
        }
        let (strength, cap_low, cap_high) = match engine_operation {
            Operation::Add { strength } | Operation::Orthogonal { strength } => (strength, 0.0, 0.0),
            Operation::Clamp { value } => (value, 0.0, 0.0),
            Operation::Ablate => (0.0, 0.0, 0.0),
            Operation::Cap { lo, hi } => (0.0, lo, hi),
        };
        let applied = pb::AppliedIntervention {
            hook: hook_of_target.to_string(),
            operation: operation as i32,
            strength,
            cap_low,
            cap_high,
            prompt_positions: (0..prompt_len).filter(|&p| edit.edits_position(p)).map(|p| p as u32).collect(),
            edits_generated: match &edit.positions {
                Positions::All | Positions::Generated { .. } => true,
                Positions::Prompt { .. } => false,
                Positions::Ranges(ranges) => ranges.iter().any(|r| r.end > prompt_len),
            },
            target: description,
        };
        Ok((edit, applied))
    }

    /// A hook of this model, named in `field`.
    fn hook(&self, field: &str, name: &str) -> Result<HookPoint> {
        let hook: HookPoint = name.parse().map_err(|e| ServiceError::InvalidArgument(format!("{field}: {e}")))?;
        let n_layers = self.lens.model().config().n_layers;
        if hook.layer().is_some_and(|l| l >= n_layers) {
            return Err(ServiceError::InvalidArgument(format!("{field}: {hook} is past the model's depth: it has {n_layers} layers (0..={})", n_layers - 1)));
        }
        Ok(hook)
    }

    /// The hook's mean residual norm, measured once per server on [`REFERENCE_TEXT`].
    async fn residual_norm(&self, hook: HookPoint) -> Result<f32> {
        if let Some(norm) = self.state.residual_norms.lock().expect("norms lock").get(&hook) {
            return Ok(*norm);
        }
        let lens = self.lens.clone();
        let norm = self
            .state
            .workers
            .run(self.deadline, move |cancel| {
                let tokenizer = lens.model().tokenizer()?;
                let mut ids: Vec<u32> = tokenizer.bos_token_id().into_iter().collect();
                ids.extend(tokenizer.encode(REFERENCE_TEXT)?);
                let read = Read { hooks: Hooks::new().capture(hook).cancel_when(cancel), ..Read::only(Vec::new(), Rows::RealAfterFirst) };
                let out = lens.run(&TokenBatch::single(&ids)?, &read)?;
                let rows: Vec<Vec<f32>> = out.captured[&hook].to_vec2()?;
                Ok(rows.iter().map(|r| norm(r)).sum::<f32>() / rows.len().max(1) as f32)
            })
            .await?;
        self.state.residual_norms.lock().expect("norms lock").insert(hook, norm);
        Ok(norm)
    }
}

/// Neutral English prose on which the residual-norm unit is measured (BOS excluded: its
/// attention-sink norm is orders of magnitude above the other positions').
const REFERENCE_TEXT: &str = "The town sits at the edge of a wide valley, where a river bends slowly past fields of wheat \
and rows of old stone houses. In the morning people walk to the market to buy bread, fruit and fish, and children \
run along the road to school. The weather changes with the seasons: long warm days in summer, rain in autumn, and \
snow that covers the hills in winter. Visitors often stay for a week to see the castle, the church and the small \
museum, which tells the story of the farmers, traders and craftsmen who built the place over many centuries.";

struct Scale {
    unit: pb::Unit,
    max_activation: Option<f32>,
    residual_norm: Option<f32>,
    direction_norm: f32,
}

impl Scale {
    /// A coefficient of `d` (ADD's s, CLAMP's v) in raw units.
    fn along_d(&self, s: f32) -> f32 {
        match self.unit {
            pb::Unit::Raw => s,
            pb::Unit::MaxActivation => s * self.max_activation.unwrap_or(0.0),
            pb::Unit::ResidualNorm => s * self.residual_norm.unwrap_or(0.0) / self.direction_norm,
        }
    }

    /// A coefficient of `d̂` (ORTHOGONAL's s, CAP's bounds) in raw units.
    fn along_unit(&self, s: f32) -> f32 {
        match self.unit {
            pb::Unit::Raw => s,
            pb::Unit::MaxActivation => s * self.max_activation.unwrap_or(0.0) * self.direction_norm,
            pb::Unit::ResidualNorm => s * self.residual_norm.unwrap_or(0.0),
        }
    }
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}
