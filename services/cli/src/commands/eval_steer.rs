//! `loupe eval steer`: does steering with a dictionary's features work? AxBench-style, on
//! the store's features with the clearest meanings (chosen by a rule, not by hand), over
//! neutral prompts and a sweep of strengths, against a prompting baseline and DiffMean
//! vectors.
//!
//! - Features: density in [1e-4, 2e-2], at least 8 top examples, and a concept word at the
//!   peak of at least half of them: the most frequent peak word that is alphabetic, 3+
//!   letters, and not among the 500 most frequent words of all the store's examples, and starting a word (so a
//!   concept is a content word, not "the" or "only"); ranked by that share, then max
//!   activation; one feature per concept word.
//! - Concept detector (independent of any steered direction): a continuation shows the
//!   concept when one of its words starts with a word found at the peak of 2+ of the
//!   feature's top examples.
//! - Fluency: perplexity of the continuation under the unsteered model given the neutral
//!   prompt, and distinct-2 (unique token bigrams / bigrams) relative to the default output.
//! - Best strength: the highest incidence whose perplexity stays within `--ppl-bound` x the
//!   default's and whose distinct-2 stays at least half the default's (a loop of one phrase
//!   can have a low perplexity); ties: the smaller strength.
//! - Prompts: neutral user requests in the model's chat template; steering edits the
//!   generated tokens only.
//! - Methods: ADD of the feature's decoder row at s x its max activation; ADD of the DiffMean
//!   vector (top examples of the feature minus top examples of the other chosen features)
//!   scaled to the same norm; and prompting (AxBench's baseline: the request with "Talk
//!   about CONCEPT." appended).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use loupe_engine::generate::{generate_rows, SamplingParams};
use loupe_engine::steering::{diffmean, with_edits, Edit, Operation, Positions, Target};
use loupe_engine::{Dictionary, Hooks, Logits, Model, TokenBatch};
use loupe_store::{ExampleKind, ExampleRecord, StoreReader};
use serde_json::json;

use crate::output::{default_dictionary, print_json, ModelArgs};

#[derive(clap::Subcommand)]
pub enum Eval {
    /// Steering sweep over the store's clearest features: concept incidence, perplexity and
    /// distinct-2 per strength, against prompting and DiffMean.
    Steer(SteerArgs),
}

#[derive(clap::Args)]
pub struct SteerArgs {
    /// The store (default: the demo store).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Dictionary id in the store (default: its first).
    #[arg(long)]
    pub dictionary: Option<String>,
    /// Dictionary folder (default: the path its manifest records, else the embedded default).
    #[arg(long)]
    pub dictionary_dir: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 20)]
    pub features: usize,
    /// Strengths in multiples of each feature's max activation (0 = the default output).
    #[arg(long, default_value = "0,1,2,4,8,16", value_delimiter = ',')]
    pub strengths: Vec<f32>,
    /// Neutral prompts used (of the built-in 8).
    #[arg(long, default_value_t = 8)]
    pub prompts: usize,
    /// Tokens per continuation.
    #[arg(long, default_value_t = 32)]
    pub tokens: usize,
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A strength counts as fluent while its perplexity is within this factor of the default's.
    #[arg(long, default_value_t = 2.0)]
    pub ppl_bound: f64,
    /// Write the full report (JSON) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

const NEUTRAL_PROMPTS: [&str; 8] = [
    "Tell me about your weekend.",
    "Describe your favourite place.",
    "Write a short note to a friend.",
    "What did you do yesterday?",
    "Give me some advice for a new job.",
    "Tell me a short story.",
    "What makes a good meal?",
    "Describe the view from a window.",
];

/// English function words (pronouns, determiners, prepositions, conjunctions, auxiliaries,
/// and the commonest adverbs and quantifiers): never concepts.
const FUNCTION_WORDS: &[&str] = &[
    "the",
    "and",
    "for",
    "that",
    "with",
    "this",
    "from",
    "was",
    "were",
    "are",
    "have",
    "has",
    "had",
    "not",
    "but",
    "his",
    "her",
    "hers",
    "their",
    "theirs",
    "they",
    "you",
    "your",
    "yours",
    "she",
    "him",
    "its",
    "our",
    "ours",
    "will",
    "would",
    "could",
    "should",
    "shall",
    "might",
    "must",
    "may",
    "can",
    "which",
    "what",
    "when",
    "where",
    "who",
    "whom",
    "whose",
    "why",
    "how",
    "all",
    "any",
    "each",
    "every",
    "both",
    "either",
    "neither",
    "one",
    "two",
    "been",
    "being",
    "into",
    "onto",
    "upon",
    "than",
    "then",
    "them",
    "there",
    "these",
    "those",
    "also",
    "did",
    "does",
    "doing",
    "done",
    "out",
    "about",
    "above",
    "below",
    "over",
    "under",
    "again",
    "further",
    "more",
    "most",
    "some",
    "such",
    "very",
    "just",
    "only",
    "own",
    "same",
    "too",
    "even",
    "still",
    "yet",
    "ever",
    "never",
    "often",
    "here",
    "now",
    "off",
    "once",
    "between",
    "through",
    "during",
    "before",
    "after",
    "while",
    "because",
    "until",
    "against",
    "among",
    "within",
    "without",
    "toward",
    "towards",
    "like",
    "unto",
    "thee",
    "thou",
    "thy",
    "thine",
    "hath",
    "doth",
    "shalt",
    "ye",
    "myself",
    "yourself",
    "himself",
    "herself",
    "itself",
    "ourselves",
    "themselves",
    "other",
    "another",
    "much",
    "many",
    "few",
    "less",
    "least",
    "well",
    "also",
    "though",
    "although",
    "whether",
    "since",
    "per",
    "via",
    "etc",
    "let",
    "get",
    "got",
    "say",
    "said",
    "says",
    "make",
    "made",
    "take",
    "took",
    "come",
    "came",
    "went",
    "goes",
];
/// A feature chosen for the sweep, with its concept.
struct Chosen {
    feature: u32,
    max_activation: f32,
    concept: String,
    /// Peak words of 2+ top examples: what the detector looks for.
    detector: Vec<String>,
    clarity: f64,
    examples: Vec<String>,
}

fn word_of(token: &str) -> Option<String> {
    let word: String = token.trim().to_lowercase();
    (word.len() >= 3 && word.chars().all(|c| c.is_alphabetic())).then_some(word)
}

/// The word at an example's peak, if the token starts a word and it is not a function word.
fn peak_word(e: &ExampleRecord) -> Option<String> {
    let token = e.tokens.get(e.max_position as usize)?;
    if !token.starts_with(' ') {
        return None;
    }
    word_of(token).filter(|w| !FUNCTION_WORDS.contains(&w.as_str()))
}

fn example_text(e: &ExampleRecord) -> String {
    e.tokens.iter().skip(1).cloned().collect::<String>()
}

/// The rule of the module doc, over every feature of the dictionary.
fn choose(features: &[loupe_store::FeatureRecord], examples: &[ExampleRecord], n: usize) -> Vec<Chosen> {
    let mut by_feature: HashMap<u32, Vec<&ExampleRecord>> = HashMap::new();
    for e in examples.iter().filter(|e| e.kind == ExampleKind::Top) {
        by_feature.entry(e.feature).or_default().push(e);
    }
    let mut candidates = Vec::new();
    for f in features.iter().filter(|f| (1e-4..=2e-2).contains(&f.density)) {
        let Some(top) = by_feature.get(&f.feature) else { continue };
        if top.len() < 8 {
            continue;
        }
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for e in top {
            if let Some(w) = peak_word(e) {
                *counts.entry(w).or_default() += 1;
            }
        }
        let Some((concept, count)) = counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))) else { continue };
        let clarity = *count as f64 / top.len() as f64;
        if clarity < 0.5 {
            continue;
        }
        let detector = counts.iter().filter(|(_, &c)| c >= 2).map(|(w, _)| w.clone()).collect();
        candidates.push(Chosen { feature: f.feature, max_activation: f.max_activation, concept: concept.clone(), detector, clarity, examples: top.iter().map(|e| example_text(e)).collect() });
    }
    candidates.sort_by(|a, b| b.clarity.total_cmp(&a.clarity).then(b.max_activation.total_cmp(&a.max_activation)).then(a.feature.cmp(&b.feature)));
    let mut seen = std::collections::HashSet::new();
    candidates.into_iter().filter(|c| seen.insert(c.concept.clone())).take(n).collect()
}

fn shows_concept(text: &str, detector: &[String]) -> bool {
    text.to_lowercase().split(|c: char| !c.is_alphabetic()).any(|w| detector.iter().any(|d| w.starts_with(d.as_str())))
}

fn distinct_2(ids: &[u32]) -> f64 {
    if ids.len() < 2 {
        return 0.0;
    }
    let bigrams: std::collections::HashSet<(u32, u32)> = ids.windows(2).map(|w| (w[0], w[1])).collect();
    bigrams.len() as f64 / (ids.len() - 1) as f64
}

/// Perplexity of each continuation given `prompt`, under the unsteered model (NaN if empty).
fn perplexities(model: &Model, prompt: &[u32], continuations: &[Vec<u32>]) -> anyhow::Result<Vec<f64>> {
    let sequences: Vec<Vec<u32>> = continuations.iter().map(|c| prompt.iter().chain(c).copied().collect()).collect();
    let batch = TokenBatch::right_padded(&sequences, model.pad_token_id())?;
    let logits = model.forward(&batch, &Hooks::new(), Logits::All, None)?.logits.context("logits")?;
    let mut out = Vec::new();
    for (row, c) in continuations.iter().enumerate() {
        if c.is_empty() {
            out.push(f64::NAN);
            continue;
        }
        let row_logits: Vec<Vec<f32>> = logits.get(row)?.to_vec2()?;
        let nll: f64 = c.iter().enumerate().map(|(i, &t)| -loupe_engine::generate::log_probability(&row_logits[prompt.len() + i - 1], t) as f64).sum();
        out.push((nll / c.len() as f64).exp());
    }
    Ok(out)
}

#[derive(Default, Clone)]
struct Cell {
    hits: usize,
    n: usize,
    log_ppl: Vec<f64>,
    distinct: Vec<f64>,
    examples: Vec<String>,
}

impl Cell {
    fn add(&mut self, text: &str, ids: &[u32], ppl: f64, detector: &[String]) {
        self.hits += usize::from(shows_concept(text, detector));
        self.n += 1;
        if ppl.is_finite() {
            self.log_ppl.push(ppl.ln());
        }
        self.distinct.push(distinct_2(ids));
        if self.examples.len() < 2 {
            self.examples.push(text.to_string());
        }
    }
    fn incidence(&self) -> f64 {
        self.hits as f64 / self.n.max(1) as f64
    }
    fn perplexity(&self) -> f64 {
        (self.log_ppl.iter().sum::<f64>() / self.log_ppl.len().max(1) as f64).exp()
    }
    fn distinct(&self) -> f64 {
        self.distinct.iter().sum::<f64>() / self.distinct.len().max(1) as f64
    }
}

pub fn run(command: Eval) -> anyhow::Result<()> {
    let Eval::Steer(args) = command;
    let store = args.store.clone().unwrap_or_else(|| loupe_query::config::loupe_home().join("demo-store"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (record, features, examples) = runtime.block_on(async {
        let reader = StoreReader::open(&super::store_location(&store)?).await.with_context(|| format!("opening {}", store.display()))?;
        let dictionaries = reader.dictionaries().await?;
        let record = match &args.dictionary {
            Some(id) => dictionaries.into_iter().find(|d| &d.dictionary_id == id).with_context(|| format!("no dictionary {id:?} in {}", store.display()))?,
            None => dictionaries.into_iter().next().context("the store has no dictionary")?,
        };
        let features = reader.features_as_built(&record.dictionary_id).await?;
        let examples = reader.examples(&record.dictionary_id, None).await?;
        Ok::<_, anyhow::Error>((record, features, examples))
    })?;
    let model = args.model.load()?;
    let dictionary_dir =
        args.dictionary_dir.clone().or_else(|| record.manifest.pointer("/dictionary/path").and_then(|p| p.as_str()).map(PathBuf::from).filter(|p| p.exists())).unwrap_or_else(default_dictionary);
    let dictionary = Arc::new(Dictionary::load_for_model(&dictionary_dir, model.config())?);
    let hook = dictionary.info().hook_out;
    let chosen = choose(&features, &examples, args.features);
    anyhow::ensure!(!chosen.is_empty(), "no feature of {} meets the selection rule", record.dictionary_id);
    let tokenizer = model.tokenizer()?;
    let prompts: Vec<&str> = NEUTRAL_PROMPTS.iter().copied().take(args.prompts.clamp(1, NEUTRAL_PROMPTS.len())).collect();
    let chat = |request: &str| -> anyhow::Result<Vec<u32>> {
        let text = loupe_engine::chat::render(tokenizer.chat_template(), &[loupe_engine::chat::ChatMessage::user(request)], true)?;
        Ok(tokenizer.encode(&text)?)
    };
    let params = SamplingParams { temperature: args.temperature, top_p: 0.95, seed: args.seed, max_new_tokens: args.tokens, stop_tokens: tokenizer.eos_token_id().into_iter().collect() };
    let strengths = args.strengths.clone();
    let bar = ProgressBar::new((chosen.len() * prompts.len()) as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} feature x prompt  {elapsed} (eta {eta})").expect("valid template"));
    let mut rows_out = Vec::new();
    for (ci, c) in chosen.iter().enumerate() {
        // DiffMean from text that has nothing to do with the steered direction's weights: the
        // feature's top examples against the other chosen features' top examples.
        let negative: Vec<String> = chosen.iter().enumerate().filter(|(j, _)| *j != ci).flat_map(|(_, o)| o.examples.iter().take(2).cloned()).collect();
        let with_bos = |texts: &[String]| -> anyhow::Result<Vec<Vec<u32>>> { texts.iter().map(|t| Ok(tokenizer.bos_token_id().into_iter().chain(tokenizer.encode(t)?).collect())).collect() };
        let vector = diffmean(&model, hook, &with_bos(&c.examples)?, &with_bos(&negative)?, &Hooks::new())?.direction;
        let decoder_norm = dictionary.decoder_row(c.feature as usize).iter().map(|v| v * v).sum::<f32>().sqrt();
        let vector_norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        let diffmean_direction: Vec<f32> = vector.iter().map(|v| v / vector_norm * decoder_norm).collect();
        let mut cells: BTreeMap<(String, String), Cell> = BTreeMap::new();
        for prompt_text in &prompts {
            let prompt = chat(prompt_text)?;
            // One batch per method: row i steered at strengths[i] (row of strength 0 unedited).
            let mut outputs: Vec<(String, f32, Vec<u32>)> = Vec::new();
            for method in ["feature", "diffmean"] {
                let mut edits = Vec::new();
                for (row, &s) in strengths.iter().enumerate() {
                    if s == 0.0 {
                        continue;
                    }
                    let target = match method {
                        "feature" => Target::Feature { dictionary: dictionary.clone(), feature: c.feature },
                        _ => Target::Vector { hook, direction: diffmean_direction.clone() },
                    };
                    let positions = Positions::Generated { prompt_len: prompt.len() };
                    let mut edit = Edit::new(target, Operation::Add { strength: s * c.max_activation }, positions)?;
                    edit.rows = Some(vec![row]);
                    edits.push(edit);
                }
                let generated = generate_rows(&model, &prompt, strengths.len(), &params, &with_edits(Hooks::new(), &edits), |_, _| {})?;
                for (row, ids) in generated.into_iter().enumerate() {
                    let ids: Vec<u32> = ids.into_iter().filter(|t| !params.stop_tokens.contains(t)).collect();
                    let method = if strengths[row] == 0.0 { "default" } else { method };
                    if method == "default" && outputs.iter().any(|o| o.0 == "default") {
                        continue;
                    }
                    outputs.push((method.to_string(), strengths[row], ids));
                }
            }
            let instructed = chat(&format!("{prompt_text} Talk about {}.", c.concept))?;
            let ids: Vec<u32> = generate_rows(&model, &instructed, 1, &params, &Hooks::new(), |_, _| {})?.remove(0).into_iter().filter(|t| !params.stop_tokens.contains(t)).collect();
            outputs.push(("prompting".into(), 0.0, ids));
            let continuations: Vec<Vec<u32>> = outputs.iter().map(|o| o.2.clone()).collect();
            let ppl = perplexities(&model, &prompt, &continuations)?;
            for ((method, s, ids), p) in outputs.iter().zip(ppl) {
                let text = tokenizer.decode(ids)?;
                cells.entry((method.clone(), format!("{s}"))).or_default().add(&text, ids, p, &c.detector);
            }
            bar.inc(1);
        }
        let default = cells.get(&("default".to_string(), "0".to_string())).cloned().unwrap_or_default();
        let mut methods = serde_json::Map::new();
        for method in ["feature", "diffmean", "prompting"] {
            let mut sweep = Vec::new();
            let mut best: Option<(f64, f32, f64)> = None;
            let keys: Vec<f32> = if method == "prompting" { vec![0.0] } else { strengths.iter().copied().filter(|&s| s != 0.0).collect() };
            for s in keys {
                let Some(cell) = cells.get(&(method.to_string(), format!("{s}"))) else { continue };
                let fluent = cell.perplexity() <= args.ppl_bound * default.perplexity() && cell.distinct() >= 0.5 * default.distinct();
                if fluent && best.is_none_or(|b| cell.incidence() > b.0) {
                    best = Some((cell.incidence(), s, cell.perplexity()));
                }
                sweep.push(json!({
                    "strength": s,
                    "incidence": cell.incidence(),
                    "perplexity": cell.perplexity(),
                    "distinct2_vs_default": cell.distinct() / default.distinct().max(1e-9),
                    "examples": cell.examples,
                }));
            }
            methods.insert(method.into(), json!({"sweep": sweep, "best": best.map(|(i, s, p)| json!({"strength": s, "incidence": i, "perplexity": p}))}));
        }
        rows_out.push(json!({
            "feature": c.feature,
            "concept": c.concept,
            "detector": c.detector,
            "clarity": c.clarity,
            "max_activation": c.max_activation,
            "default": {"incidence": default.incidence(), "perplexity": default.perplexity(), "examples": default.examples},
            "methods": methods,
        }));
    }
    bar.finish_and_clear();
    let summary = summarize(&rows_out);
    let report = json!({
        "dictionary": record.dictionary_id,
        "store": store,
        "model": args.model.model.clone().unwrap_or_else(loupe_query::config::default_model_path),
        "prompts": prompts,
        "tokens": args.tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "strengths_x_max_activation": strengths,
        "ppl_bound": args.ppl_bound,
        "rule": "features: density in [1e-4, 2e-2], >= 8 top examples, a concept word (alphabetic, 3+ letters, starting a word, not a function word) at the peak of >= 50% of them; ranked by that share, then max activation; one per concept. Detector: a word of the continuation starts with a peak word of >= 2 top examples. Best: highest incidence with perplexity <= ppl_bound x default and distinct-2 >= 0.5 x default.",
        "summary": summary,
        "features": rows_out,
    });
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", out.display()))?;
    }
    if args.json {
        return print_json(&report);
    }
    print_table(&report);
    Ok(())
}

/// Per method: mean incidence at the best (fluent) strength, features steered above the
/// default's incidence there, the same at any strength regardless of fluency, and the mean
/// default incidence.
fn summarize(rows: &[serde_json::Value]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for method in ["feature", "diffmean", "prompting"] {
        let (mut best, mut any) = (Vec::new(), Vec::new());
        let (mut steered, mut steered_any) = (0, 0);
        for r in rows {
            let default = r["default"]["incidence"].as_f64().unwrap_or(0.0);
            let b = r["methods"][method]["best"]["incidence"].as_f64().unwrap_or(default);
            let sweep = r["methods"][method]["sweep"].as_array().cloned().unwrap_or_default();
            let a = sweep.iter().filter_map(|c| c["incidence"].as_f64()).fold(default, f64::max);
            best.push(b);
            any.push(a);
            steered += usize::from(b > default);
            steered_any += usize::from(a > default);
        }
        out.insert(
            method.into(),
            json!({
                "mean_best_incidence": best.iter().sum::<f64>() / best.len().max(1) as f64,
                "features_above_default": steered,
                "mean_max_incidence_any_strength": any.iter().sum::<f64>() / any.len().max(1) as f64,
                "features_above_default_any_strength": steered_any,
                "features": rows.len(),
            }),
        );
    }
    let default: Vec<f64> = rows.iter().map(|r| r["default"]["incidence"].as_f64().unwrap_or(0.0)).collect();
    out.insert("default".into(), json!({"mean_incidence": default.iter().sum::<f64>() / default.len().max(1) as f64}));
    serde_json::Value::Object(out)
}

fn print_table(report: &serde_json::Value) {
    let strengths: Vec<f64> = report["strengths_x_max_activation"].as_array().map(|a| a.iter().filter_map(|v| v.as_f64()).collect()).unwrap_or_default();
    println!(
        "steering eval: {} on {} prompts x {} tokens; incidence (perplexity) per strength in x max activation",
        report["dictionary"].as_str().unwrap_or(""),
        report["prompts"].as_array().map_or(0, Vec::len),
        report["tokens"]
    );
    println!("{:<7} {:<14} {:<9} {}", "feature", "concept", "method", strengths.iter().map(|s| format!("{s:>12}")).collect::<String>());
    for r in report["features"].as_array().into_iter().flatten() {
        for method in ["feature", "diffmean", "prompting"] {
            let sweep = r["methods"][method]["sweep"].as_array().cloned().unwrap_or_default();
            let cells: String =
                sweep.iter().map(|c| format!("{:>5.2} ({:>4.0})", c["incidence"].as_f64().unwrap_or(0.0), c["perplexity"].as_f64().unwrap_or(0.0))).map(|c| format!("{c:>12}")).collect();
            let default = format!("{:>5.2} ({:>4.0})", r["default"]["incidence"].as_f64().unwrap_or(0.0), r["default"]["perplexity"].as_f64().unwrap_or(0.0));
            let best = &r["methods"][method]["best"];
            println!(
                "{:<7} {:<14} {:<9} {default:>12}{cells}   best {}",
                r["feature"],
                r["concept"].as_str().unwrap_or(""),
                method,
                if best.is_null() { "-".into() } else { format!("{}x: {:.2}", best["strength"], best["incidence"].as_f64().unwrap_or(0.0)) }
            );
        }
    }
    println!("summary: {}", report["summary"]);
}
