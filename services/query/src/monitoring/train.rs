//! TrainProbe and EvaluateMonitor: a linear probe from labelled texts on a held-out split
//! (the same split, probes and metrics as `loupe probe train`), and a monitor's metrics on
//! labelled texts with bootstrap intervals.

use std::collections::HashMap;

use loupe_engine::monitor::{Aggregation, Calibration, Detector, Signal};
use loupe_engine::{HookPoint, Hooks, Read, Rows, TokenBatch};
use loupe_schema::proto::v1 as pb;
use loupe_train::probes::{self, split_of, Split};

use crate::error::{Result, ServiceError};
use crate::state::AppState;

/// Texts per model call while pooling.
const POOL_BATCH: usize = 16;
/// Bootstrap resamples when the request does not say, and at most.
const DEFAULT_BOOTSTRAP: usize = 1000;
const MAX_BOOTSTRAP: usize = 10_000;
/// Features in a sparse probe when the request does not say, and at most.
const DEFAULT_SPARSE_K: usize = 16;
const MAX_SPARSE_K: usize = 256;

/// Checks labelled texts; training needs both labels, evaluation takes one-label sets too
/// (a control set of negatives measures the false-positive rate alone).
fn check_examples(examples: &[pb::LabelledText], max: usize, max_bytes: usize, both_labels: bool) -> Result<()> {
    if examples.is_empty() {
        return Err(ServiceError::InvalidArgument("examples is empty".into()));
    }
    if examples.len() > max {
        return Err(ServiceError::InvalidArgument(format!("{} examples; this server takes at most {max} (max_train_texts)", examples.len())));
    }
    if let Some(i) = examples.iter().position(|e| e.text.trim().is_empty() || e.text.len() > max_bytes) {
        return Err(ServiceError::InvalidArgument(format!("examples[{i}].text must be non-empty and at most {max_bytes} bytes")));
    }
    if both_labels && (!examples.iter().any(|e| e.label) || !examples.iter().any(|e| !e.label)) {
        return Err(ServiceError::InvalidArgument("examples need texts of both labels".into()));
    }
    Ok(())
}

/// One text read for training: the mean over its tokens after BOS of the hook's activation
/// (and of the dictionary's codes, when one is read), and those tokens.
struct Pooled {
    mean: Vec<f32>,
    features: HashMap<u32, f32>,
    tokens: Vec<u32>,
}

/// Reads `texts` at `hook` (and through the lens dictionary at `dictionary`), in batches.
async fn pool(state: &AppState, hook: HookPoint, dictionary: Option<usize>, texts: Vec<String>) -> Result<Vec<Pooled>> {
    let lens = state.engine()?;
    let max_tokens = state.limits.max_tokens;
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(POOL_BATCH) {
        let (lens, chunk) = (lens.clone(), chunk.to_vec());
        let pooled = state
            .workers
            .run(None, move |cancel| {
                let tokenizer = lens.model().tokenizer()?;
                let sequences: Vec<Vec<u32>> = chunk
                    .iter()
                    .map(|t| {
                        let mut ids: Vec<u32> = tokenizer.bos_token_id().into_iter().collect();
                        ids.extend(tokenizer.encode(t)?);
                        ids.truncate(max_tokens);
                        Ok(ids)
                    })
                    .collect::<Result<_>>()?;
                let batch = TokenBatch::right_padded(&sequences, lens.model().pad_token_id())?;
                let read = Read { hooks: Hooks::new().capture(hook).cancel_when(cancel), ..Read::only(dictionary.into_iter().collect(), Rows::RealAfterFirst) };
                let output = lens.run(&batch, &read)?;
                let rows: Vec<Vec<f32>> = output.captured[&hook].to_vec2()?;
                let mut at = 0;
                let mut pooled = Vec::with_capacity(sequences.len());
                for ids in &sequences {
                    let n = ids.len().saturating_sub(1);
                    let mut mean = vec![0f32; rows.first().map_or(0, Vec::len)];
                    let mut features: HashMap<u32, f32> = HashMap::new();
                    for r in at..at + n {
                        mean.iter_mut().zip(&rows[r]).for_each(|(m, v)| *m += v / n as f32);
                        if let Some(codes) = output.codes.first() {
                            let (indices, values) = codes.features.token(r);
                            for (&i, &v) in indices.iter().zip(values) {
                                *features.entry(i).or_insert(0.0) += v / n as f32;
                            }
                        }
                    }
                    at += n;
                    pooled.push(Pooled { mean, features, tokens: ids.iter().skip(1).copied().collect() });
                }
                Ok(pooled)
            })
            .await?;
        crate::access::charge_model_tokens(pooled.iter().map(|p| p.tokens.len() + 1).sum());
        out.extend(pooled);
    }
    Ok(out)
}

/// The `k` features whose pooled activation best separates the train texts (AUROC furthest
/// from 0.5), most separating first.
fn best_features(pooled: &[Pooled], train: &[usize], y_train: &[bool], d_sae: usize, k: usize) -> Vec<u32> {
    let mut ranked: Vec<(u32, f64)> = (0..d_sae as u32)
        .map(|f| {
            let scores: Vec<f32> = train.iter().map(|&i| pooled[i].features.get(&f).copied().unwrap_or(0.0)).collect();
            (f, probes::auroc(&scores, y_train))
        })
        .filter(|(_, a)| a.is_finite())
        .collect();
    ranked.sort_by(|a, b| (b.1 - 0.5).abs().total_cmp(&(a.1 - 0.5).abs()).then(a.0.cmp(&b.0)));
    ranked.into_iter().take(k).map(|(f, _)| f).collect()
}

pub async fn train_probe(state: &AppState, r: &pb::TrainProbeRequest) -> Result<(Detector, pb::ProbeReport)> {
    let lens = state.engine()?;
    let method = pb::ProbeMethod::try_from(r.method).map_err(|_| ServiceError::InvalidArgument(format!("method: {} is not a probe method", r.method)))?;
    // The sparse probe reads its dictionary's features at the dictionary's own hook.
    let sparse = match method {
        pb::ProbeMethod::Sparse => {
            let at = lens.position(&r.dictionary_id).ok_or_else(|| ServiceError::InvalidArgument(format!("dictionary_id: {:?} is not a dictionary this server runs", r.dictionary_id)))?;
            let k = match r.k as usize {
                0 => DEFAULT_SPARSE_K,
                k if k > MAX_SPARSE_K => return Err(ServiceError::InvalidArgument(format!("k: {k} is above {MAX_SPARSE_K}"))),
                k => k,
            };
            Some((at, k))
        }
        _ => None,
    };
    let hook: HookPoint = match (sparse, r.hook.is_empty()) {
        (Some((at, _)), true) => lens.dictionaries()[at].dictionary.info().hook_in,
        _ => r.hook.parse().map_err(|e| ServiceError::InvalidArgument(format!("hook: {e}")))?,
    };
    if lens.model().config().hook_width(hook).is_none() {
        return Err(ServiceError::InvalidArgument(format!("hook: {hook} is not a hook of this model ({} layers)", lens.model().config().n_layers)));
    }
    if let Some((at, _)) = sparse {
        let reads = lens.dictionaries()[at].dictionary.info().hook_in;
        if reads != hook {
            return Err(ServiceError::InvalidArgument(format!("hook: dictionary {:?} reads {reads}, not {hook} (leave hook empty for a sparse probe)", r.dictionary_id)));
        }
    }
    let target_fpr = if r.target_fpr == 0.0 { 0.01 } else { r.target_fpr };
    if !(target_fpr > 0.0 && target_fpr < 1.0) {
        return Err(ServiceError::InvalidArgument(format!("target_fpr: {target_fpr} must be in (0, 1)")));
    }
    let severity = super::definition::severity_from_proto(r.severity, "severity")?;
    let action = super::definition::action_from_proto(r.action, "action")?;
    check_examples(&r.examples, state.limits.max_train_texts, state.limits.max_text_bytes, true)?;
    let splits: Vec<Split> = r.examples.iter().map(|e| split_of(&e.text)).collect();
    let pick = |s: Split| -> Vec<usize> { (0..splits.len()).filter(|&i| splits[i] == s).collect() };
    let (train, validation, test) = (pick(Split::Train), pick(Split::Validation), pick(Split::Test));
    let labels = |idx: &[usize]| -> Vec<bool> { idx.iter().map(|&i| r.examples[i].label).collect() };
    let (y_train, y_validation, y_test) = (labels(&train), labels(&validation), labels(&test));
    for (name, y) in [("train", &y_train), ("validation", &y_validation)] {
        if !y.iter().any(|&l| l) || !y.iter().any(|&l| !l) {
            return Err(ServiceError::InvalidArgument(format!(
                "examples: the {name} split (by a hash of each text: 60% train, 20% validation, 20% test) has no texts of one label; give more examples"
            )));
        }
    }
    let pooled = pool(state, hook, sparse.map(|(at, _)| at), r.examples.iter().map(|e| e.text.clone()).collect()).await?;
    let d_sae = sparse.map_or(0, |(at, _)| lens.dictionaries()[at].dictionary.info().d_sae);
    let dictionary_id = r.dictionary_id.clone();
    let split = (train.clone(), validation.clone(), test.clone(), y_train.clone(), y_validation.clone(), y_test.clone());
    let (signal, s_validation, s_test, l2, bag_auroc) = state
        .long_threads
        .run(move || {
            let (train, validation, test, y_train, y_validation, y_test) = split;
            // The probe's inputs: the mean-pooled activation, or the chosen features' means.
            let chosen = sparse.map(|(_, k)| best_features(&pooled, &train, &y_train, d_sae, k)).unwrap_or_default();
            let row = |p: &Pooled| -> Vec<f32> {
                if sparse.is_some() {
                    chosen.iter().map(|f| p.features.get(f).copied().unwrap_or(0.0)).collect()
                } else {
                    p.mean.clone()
                }
            };
            let rows = |idx: &[usize]| -> Vec<Vec<f32>> { idx.iter().map(|&i| row(&pooled[i])).collect() };
            let (x_train, x_validation, x_test) = (rows(&train), rows(&validation), rows(&test));
            let (probe, l2) = match method {
                pb::ProbeMethod::Diffmean => (probes::diffmean(&x_train, &y_train), 0.0),
                _ => {
                    let (probe, chosen) = probes::tuned_logistic(&x_train, &y_train, &x_validation, &y_validation);
                    (probe, chosen.l2)
                }
            };
            // The bag-of-words baseline on the same split.
            let bag = probes::BagOfWords::fit(train.iter().map(|&i| pooled[i].tokens.as_slice()));
            let bag_rows = |idx: &[usize]| -> Vec<Vec<f32>> { idx.iter().map(|&i| bag.features(&pooled[i].tokens)).collect() };
            let (bow, _) = probes::tuned_logistic(&bag_rows(&train), &y_train, &bag_rows(&validation), &y_validation);
            let bag_auroc = probes::auroc(&bow.scores(&bag_rows(&test)), &y_test);
            let signal = match sparse {
                Some(_) => Signal::Features { dictionary: dictionary_id, weights: chosen.iter().copied().zip(probe.weights.iter().copied()).collect(), bias: probe.bias },
                None => Signal::Linear { hook, weights: probe.weights.clone(), bias: probe.bias },
            };
            Ok((signal, probe.scores(&x_validation), probe.scores(&x_test), l2, bag_auroc))
        })
        .await?;
    let negatives: Vec<f32> = s_validation.iter().zip(labels(&validation)).filter(|(_, l)| !l).map(|(&s, _)| s).collect();
    let threshold = probes::threshold_at_fpr(&negatives, target_fpr);
    let (recall, fpr, _) = probes::rates(&s_test, &y_test, threshold);
    let validation_auroc = probes::auroc(&s_validation, &labels(&validation));
    let negative_texts: Vec<&str> = validation.iter().filter(|&&i| !r.examples[i].label).map(|&i| r.examples[i].text.as_str()).collect();
    let mut details = serde_json::Map::new();
    details.insert("method".into(), method.as_str_name().trim_start_matches("PROBE_METHOD_").to_lowercase().into());
    details.insert("l2".into(), l2.into());
    details.insert("validation_auroc".into(), validation_auroc.into());
    let calibration = Calibration {
        target_fpr,
        control_set: "TrainProbe validation negatives".into(),
        control_sha256: super::score::sha256_hex(negative_texts.join("\n").as_bytes()),
        control_texts: negative_texts.len(),
        threshold,
        details,
    };
    let mut detector = Detector::new(signal, Aggregation::Mean, threshold);
    detector.calibration = Some(calibration);
    detector.severity = severity;
    detector.action = action;
    let report = pb::ProbeReport {
        train_texts: train.len() as u32,
        validation_texts: validation.len() as u32,
        test_texts: test.len() as u32,
        l2,
        validation_auroc,
        test_auroc: probes::auroc(&s_test, &y_test),
        test_fpr_at_threshold: fpr,
        test_recall_at_threshold: recall,
        split: "FNV-1a hash of the text mod 10: 0-5 train, 6-7 validation, 8-9 test; threshold at the target FPR on the validation negatives".into(),
        bag_of_words_test_auroc: bag_auroc,
    };
    Ok((detector.with_offset_in_bias(), report))
}

fn estimate(scores: &[f32], labels: &[bool], metric: impl Fn(&[f32], &[bool]) -> f64, resamples: usize) -> pb::Estimate {
    let value = metric(scores, labels);
    let (low, high) = probes::bootstrap_ci(scores, labels, &metric, resamples, 7);
    pb::Estimate { value, low, high }
}

fn f1(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

pub async fn evaluate(state: &AppState, r: pb::EvaluateMonitorRequest) -> Result<pb::EvaluateMonitorResponse> {
    check_examples(&r.examples, state.limits.max_train_texts, state.limits.max_text_bytes, false)?;
    let resamples = match r.bootstrap as usize {
        0 => DEFAULT_BOOTSTRAP,
        n if n > MAX_BOOTSTRAP => return Err(ServiceError::InvalidArgument(format!("bootstrap {n} is above {MAX_BOOTSTRAP}"))),
        n => n,
    };
    let target_fpr = if r.target_fpr == 0.0 { 0.01 } else { r.target_fpr };
    if !(target_fpr > 0.0 && target_fpr < 1.0) {
        return Err(ServiceError::InvalidArgument(format!("target_fpr: {target_fpr} must be in (0, 1)")));
    }
    let history = loupe_store::monitor_history(&state.store_root).await?;
    let versions = history.get(&r.monitor).ok_or_else(|| ServiceError::NotFound(format!("no monitor {:?}", r.monitor)))?;
    let version = match r.version {
        0 => versions.last(),
        v => versions.get(v as usize - 1),
    }
    .ok_or_else(|| ServiceError::NotFound(format!("monitor {:?} has versions 1 to {}, not {}", r.monitor, versions.len(), r.version)))?;
    let monitor = super::registry::parse(version)?;
    let detectors = super::definition::resolve(state, &monitor).await?;
    let texts: Vec<String> = r.examples.iter().map(|e| e.text.clone()).collect();
    let labels: Vec<bool> = r.examples.iter().map(|e| e.label).collect();
    let scores = super::scores_of(state, &detectors, &texts).await?;
    let evaluation = state
        .long_threads
        .run(move || {
            // NaN (no token in scope) scores as "did not fire".
            let scores: Vec<Vec<f32>> = scores.into_iter().map(|s| s.into_iter().map(|v| if v.is_nan() { f32::NEG_INFINITY } else { v }).collect()).collect();
            let mut out = Vec::with_capacity(detectors.len());
            for (i, (d, s)) in detectors.iter().zip(&scores).enumerate() {
                let t = d.threshold;
                out.push(pb::DetectorEvaluation {
                    detector: i as u32,
                    auroc: Some(estimate(s, &labels, probes::auroc, resamples)),
                    average_precision: Some(estimate(s, &labels, probes::average_precision, resamples)),
                    recall_at_fpr: Some(estimate(s, &labels, |s, l| probes::recall_at_fpr(s, l, target_fpr), resamples)),
                    threshold: t,
                    precision: Some(estimate(s, &labels, |s, l| probes::rates(s, l, t).2, resamples)),
                    recall: Some(estimate(s, &labels, |s, l| probes::rates(s, l, t).0, resamples)),
                    f1: Some(estimate(
                        s,
                        &labels,
                        |s, l| {
                            let (recall, _, precision) = probes::rates(s, l, t);
                            f1(precision, recall)
                        },
                        resamples,
                    )),
                    fpr: Some(estimate(s, &labels, |s, l| probes::rates(s, l, t).1, resamples)),
                });
            }
            // The monitor as a whole: fires when any detector does (1.0 / 0.0 as scores).
            let fired: Vec<f32> = (0..labels.len()).map(|j| if detectors.iter().zip(&scores).any(|(d, s)| s[j] > d.threshold) { 1.0 } else { 0.0 }).collect();
            let whole = |pick: fn((f64, f64, f64)) -> f64| estimate(&fired, &labels, move |s, l| pick(probes::rates(s, l, 0.5)), resamples);
            Ok((out, whole(|r| r.2), whole(|r| r.0), whole(|r| r.1)))
        })
        .await?;
    let (detectors, precision, recall, fpr) = evaluation;
    let positives = r.examples.iter().filter(|e| e.label).count() as u32;
    Ok(pb::EvaluateMonitorResponse {
        monitor: r.monitor,
        version: version.version,
        positives,
        negatives: r.examples.len() as u32 - positives,
        detectors,
        precision: Some(precision),
        recall: Some(recall),
        fpr: Some(fpr),
    })
}
