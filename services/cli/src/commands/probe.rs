//! `loupe probe train`: detectors of a labelled text set at a hook, every method side by side
//! on one held-out split: logistic regression on mean-pooled activations (L2 chosen on the
//! validation split), DiffMean, the single best dictionary feature (max over tokens), a
//! sparse probe on the k best features, and a bag-of-words baseline on the same split.
//!
//! Splits: 60% train, 20% validation, 20% test, by a hash of the text (stable across runs
//! and machines). Thresholds are calibrated at `--fpr` on the validation negatives and
//! measured on the test negatives, a control set the calibration never saw.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use loupe_engine::monitor::{Aggregation, Calibration, Detector, Monitor, Signal};
use loupe_engine::{Dictionary, FeatureLens, HookPoint, Hooks, Read, Rows, TokenBatch};
use loupe_train::probes::{self, split_of, tuned_logistic, LinearProbe, Split};
use serde_json::json;

use crate::output::{default_dictionary, print_json, ModelArgs};

#[derive(clap::Subcommand)]
pub enum Probe {
    /// Train and compare detectors on labelled JSONL ({"text", "label": 0|1}).
    Train(TrainArgs),
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Labelled JSONL: one {"text": ..., "label": 0 or 1} per line.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value = "blocks.9.hook_resid_post")]
    pub hook: String,
    /// Dictionary for the feature-based detectors (default: the embedded default).
    #[arg(long)]
    pub dictionary: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Features in the sparse probe.
    #[arg(long, default_value_t = 16)]
    pub k: usize,
    /// False-positive rate the thresholds are calibrated at.
    #[arg(long, default_value_t = 0.01)]
    pub fpr: f64,
    /// Calibrate the thresholds on this control set (texts that should not fire: JSONL
    /// label-0 rows or plain lines) instead of the validation negatives.
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// A fresh control set (never used to fit or calibrate): the false-positive rate of each
    /// method's threshold on it.
    #[arg(long)]
    pub fresh: Option<PathBuf>,
    /// Read each text inside this template ("{text}" marks where; e.g. a chat turn asking
    /// about it). Every method reads the templated text (the template's own tokens are the
    /// same in every text, so the bag of words is unchanged). Monitors are only written
    /// without a template.
    #[arg(long)]
    pub template: Option<String>,
    /// Tokens per text (longer texts are cut).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Write the report and the trained probes (JSON) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write a monitor definition here: the detector (of logistic, DiffMean and the single
    /// best feature) with the best validation AUROC, its threshold calibrated at `--fpr` on
    /// the validation negatives, and the calibration's record.
    #[arg(long)]
    pub monitor: Option<PathBuf>,
    /// The monitor's name (default: the data file's stem).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// One text's pooled views.
struct Pooled {
    /// Mean of the hook's activations over the tokens after BOS.
    mean: Vec<f32>,
    /// Their elementwise max.
    max: Vec<f32>,
    /// The last token's activation.
    last: Vec<f32>,
    /// Max of each dictionary feature over those tokens (sparse: feature -> max).
    features: HashMap<u32, f32>,
    tokens: Vec<u32>,
}

fn read_data(path: &PathBuf) -> anyhow::Result<Vec<(String, bool)>> {
    let rows = super::monitor::read_labelled(path)?;
    anyhow::ensure!(rows.iter().any(|r| r.1) && rows.iter().any(|r| !r.1), "{} needs texts of both labels", path.display());
    Ok(rows)
}

fn pool(lens: &FeatureLens, hook: HookPoint, texts: &[(String, bool)], max_tokens: usize, template: Option<&str>) -> anyhow::Result<Vec<Pooled>> {
    let tokenizer = lens.model().tokenizer()?;
    let bar = ProgressBar::new(texts.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} texts  {elapsed} (eta {eta})").expect("valid template"));
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(16) {
        let sequences: Vec<Vec<u32>> = chunk
            .iter()
            .map(|(t, _)| {
                let mut ids: Vec<u32> = tokenizer.bos_token_id().into_iter().collect();
                match template {
                    Some(template) => ids.extend(tokenizer.encode(&template.replace("{text}", t))?),
                    None => ids.extend(tokenizer.encode(t)?),
                }
                ids.truncate(max_tokens);
                Ok(ids)
            })
            .collect::<anyhow::Result<_>>()?;
        let batch = TokenBatch::right_padded(&sequences, lens.model().pad_token_id())?;
        let read = Read { hooks: Hooks::new().capture(hook), ..Read::only(vec![0], Rows::RealAfterFirst) };
        let output = lens.run(&batch, &read)?;
        let rows: Vec<Vec<f32>> = output.captured[&hook].to_vec2()?;
        let mut at = 0;
        for (s, ids) in sequences.iter().enumerate() {
            let n = ids.len().saturating_sub(1);
            let width = rows.first().map_or(0, Vec::len);
            let mut mean = vec![0f32; width];
            let mut max = vec![f32::NEG_INFINITY; width];
            let mut features: HashMap<u32, f32> = HashMap::new();
            for r in at..at + n {
                mean.iter_mut().zip(&rows[r]).for_each(|(m, v)| *m += v / n.max(1) as f32);
                max.iter_mut().zip(&rows[r]).for_each(|(m, v)| *m = m.max(*v));
                let (indices, values) = output.codes[0].features.token(r);
                for (&i, &v) in indices.iter().zip(values) {
                    let slot = features.entry(i).or_insert(0.0);
                    *slot = slot.max(v);
                }
            }
            at += n;
            if n == 0 {
                max.iter_mut().for_each(|m| *m = 0.0);
            }
            let last = if n == 0 { vec![0f32; width] } else { rows[at - 1].clone() };
            out.push(Pooled { mean, max, last, features, tokens: sequences[s].iter().skip(1).copied().collect() });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

pub fn run(command: Probe) -> anyhow::Result<()> {
    let Probe::Train(args) = command;
    anyhow::ensure!(args.fpr > 0.0 && args.fpr < 1.0, "--fpr {} must be in (0, 1)", args.fpr);
    let data = read_data(&args.data)?;
    let model = args.model.load()?;
    let hook: HookPoint = args.hook.parse().map_err(|e| anyhow::anyhow!("--hook: {e}"))?;
    let dictionary_dir = args.dictionary.clone().unwrap_or_else(default_dictionary);
    let dictionary = Arc::new(Dictionary::load_for_model(&dictionary_dir, model.config())?);
    let d_sae = dictionary.info().d_sae;
    let dictionary_id = dictionary_dir.file_name().map_or("dictionary".into(), |n| n.to_string_lossy().into_owned());
    let lens = FeatureLens::new(model, vec![(dictionary_id.clone(), dictionary)])?;
    eprintln!("pooling {} texts at {hook} (and the dictionary's features)", data.len());
    let pooled = pool(&lens, hook, &data, args.max_tokens, args.template.as_deref())?;
    // Control sets, pooled the same way: one to calibrate on, one to measure on afresh.
    let control_set = |path: &Option<PathBuf>| -> anyhow::Result<Option<(Vec<Pooled>, usize, String)>> {
        let Some(path) = path else { return Ok(None) };
        let texts: Vec<(String, bool)> = super::monitor::read_control(path)?.into_iter().map(|t| (t, false)).collect();
        anyhow::ensure!(!texts.is_empty(), "{}: no control texts", path.display());
        eprintln!("pooling {} control texts of {}", texts.len(), path.display());
        let sha = loupe_indexer::checksum::sha256_bytes(&std::fs::read(path)?);
        Ok(Some((pool(&lens, hook, &texts, args.max_tokens, args.template.as_deref())?, texts.len(), sha)))
    };
    let control = control_set(&args.control)?;
    let fresh = control_set(&args.fresh)?;
    let splits: Vec<Split> = data.iter().map(|(t, _)| split_of(t)).collect();
    let pick = |s: Split| -> Vec<usize> { (0..data.len()).filter(|&i| splits[i] == s).collect() };
    let (train, validation, test) = (pick(Split::Train), pick(Split::Validation), pick(Split::Test));
    let labels = |idx: &[usize]| -> Vec<bool> { idx.iter().map(|&i| data[i].1).collect() };
    let (y_train, y_validation, y_test) = (labels(&train), labels(&validation), labels(&test));

    // Each method as a scorer over pooled texts, fitted on the train split.
    // (name, description, scorer, what was fitted, the monitor detector it makes, if exact).
    type Method<'a> = (&'a str, String, Box<dyn Fn(&Pooled) -> f32>, serde_json::Value, Option<Detector>);
    let mut methods: Vec<Method> = Vec::new();
    let linear = |p: &LinearProbe| Some(Detector::new(Signal::Linear { hook, weights: p.weights.clone(), bias: p.bias }, Aggregation::Mean, 0.0));
    let dense = |idx: &[usize]| -> Vec<Vec<f32>> { idx.iter().map(|&i| pooled[i].mean.clone()).collect() };
    let (probe, l2) = tuned_logistic(&dense(&train), &y_train, &dense(&validation), &y_validation);
    methods.push((
        "logistic",
        format!("logistic regression on mean-pooled {hook} ({l2})"),
        Box::new({
            let p = probe.clone();
            move |x: &Pooled| p.score(&x.mean)
        }),
        json!(probe),
        linear(&probe),
    ));
    // Report only (no per-token linear read matches a max over tokens): logistic regression
    // on the mean and the max over tokens side by side.
    let both = |idx: &[usize]| -> Vec<Vec<f32>> { idx.iter().map(|&i| pooled[i].mean.iter().chain(&pooled[i].max).copied().collect()).collect() };
    let (mean_max, l2) = tuned_logistic(&both(&train), &y_train, &both(&validation), &y_validation);
    methods.push((
        "logistic_mean_max",
        format!("logistic regression on mean- and max-pooled {hook} ({l2})"),
        Box::new({
            let p = mean_max.clone();
            move |x: &Pooled| p.score(&x.mean.iter().chain(&x.max).copied().collect::<Vec<_>>())
        }),
        json!(mean_max),
        None,
    ));
    let last = |idx: &[usize]| -> Vec<Vec<f32>> { idx.iter().map(|&i| pooled[i].last.clone()).collect() };
    let (at_last, l2) = tuned_logistic(&last(&train), &y_train, &last(&validation), &y_validation);
    methods.push((
        "logistic_last",
        format!("logistic regression on the last token at {hook} ({l2})"),
        Box::new({
            let p = at_last.clone();
            move |x: &Pooled| p.score(&x.last)
        }),
        json!(at_last),
        None,
    ));
    let dm = probes::diffmean(&dense(&train), &y_train);
    methods.push((
        "diffmean",
        format!("DiffMean on mean-pooled {hook}"),
        Box::new({
            let p = dm.clone();
            move |x: &Pooled| p.score(&x.mean)
        }),
        json!(dm),
        linear(&dm),
    ));
    // Features ranked by their own train AUROC (max over tokens as the score).
    let feature_scores = |f: u32, idx: &[usize]| -> Vec<f32> { idx.iter().map(|&i| pooled[i].features.get(&f).copied().unwrap_or(0.0)).collect() };
    let mut ranked: Vec<(u32, f64)> = (0..d_sae as u32).map(|f| (f, probes::auroc(&feature_scores(f, &train), &y_train))).filter(|(_, a)| a.is_finite()).collect();
    ranked.sort_by(|a, b| (b.1 - 0.5).abs().total_cmp(&(a.1 - 0.5).abs()).then(a.0.cmp(&b.0)));
    let (best_feature, best_auc) = ranked.first().copied().context("no feature")?;
    let sign = if best_auc >= 0.5 { 1.0 } else { -1.0 };
    methods.push((
        "feature",
        format!("single best feature {best_feature} (max over tokens)"),
        Box::new(move |x: &Pooled| sign * x.features.get(&best_feature).copied().unwrap_or(0.0)),
        json!({"feature": best_feature, "sign": sign}),
        // A feature that fires on the negatives is no detector of the positives.
        (sign > 0.0).then(|| Detector::new(Signal::Feature { dictionary: dictionary_id.clone(), feature: best_feature }, Aggregation::Max, 0.0)),
    ));
    let chosen: Vec<u32> = ranked.iter().take(args.k).map(|r| r.0).collect();
    let sparse_rows = |idx: &[usize]| -> Vec<Vec<f32>> { idx.iter().map(|&i| chosen.iter().map(|f| pooled[i].features.get(f).copied().unwrap_or(0.0)).collect()).collect() };
    let (sparse, l2) = tuned_logistic(&sparse_rows(&train), &y_train, &sparse_rows(&validation), &y_validation);
    methods.push((
        "sparse",
        format!("logistic regression on the {} best features ({l2})", chosen.len()),
        Box::new({
            let (p, chosen) = (sparse.clone(), chosen.clone());
            move |x: &Pooled| p.score(&chosen.iter().map(|f| x.features.get(f).copied().unwrap_or(0.0)).collect::<Vec<_>>())
        }),
        json!({"features": chosen, "probe": sparse}),
        None,
    ));
    // Bag of words: presence of each token seen in 2+ training texts.
    let vocabulary = probes::BagOfWords::fit(train.iter().map(|&i| pooled[i].tokens.as_slice()));
    let bag = {
        let v = vocabulary.clone();
        move |x: &Pooled| -> Vec<f32> { v.features(&x.tokens) }
    };
    let bag_rows = |idx: &[usize]| -> Vec<Vec<f32>> { idx.iter().map(|&i| bag(&pooled[i])).collect() };
    let (bow, l2) = tuned_logistic(&bag_rows(&train), &y_train, &bag_rows(&validation), &y_validation);
    methods.push((
        "bag_of_words",
        format!("bag of words: logistic regression on {} token-presence features ({l2})", vocabulary.len()),
        Box::new({
            let p = bow.clone();
            move |x: &Pooled| p.score(&bag(x))
        }),
        json!({"vocabulary": vocabulary.len()}),
        None,
    ));

    let mut results = Vec::new();
    let mut best_detector: Option<(f64, &str, Detector)> = None;
    for (name, description, scorer, fitted, detector) in &methods {
        let scores = |idx: &[usize]| -> Vec<f32> { idx.iter().map(|&i| scorer(&pooled[i])).collect() };
        let (s_validation, s_test) = (scores(&validation), scores(&test));
        let negatives: Vec<f32> = match &control {
            Some((pooled, _, _)) => pooled.iter().map(|p| scorer(p)).collect(),
            None => s_validation.iter().zip(&y_validation).filter(|(_, &l)| !l).map(|(&s, _)| s).collect(),
        };
        let threshold = probes::threshold_at_fpr(&negatives, args.fpr);
        let fresh_fpr = fresh.as_ref().map(|(pooled, _, _)| pooled.iter().filter(|p| scorer(p) > threshold).count() as f64 / pooled.len() as f64);
        let validation_auroc = probes::auroc(&s_validation, &y_validation);
        if let Some(detector) = detector {
            if best_detector.as_ref().is_none_or(|b| validation_auroc > b.0) {
                best_detector = Some((validation_auroc, name, Detector { threshold, ..detector.clone() }));
            }
        }
        let (recall, fpr, precision) = probes::rates(&s_test, &y_test, threshold);
        let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        let auroc = probes::auroc(&s_test, &y_test);
        let ap = probes::average_precision(&s_test, &y_test);
        let recall_at = probes::recall_at_fpr(&s_test, &y_test, args.fpr);
        let ci = |m: fn(&[f32], &[bool]) -> f64| probes::bootstrap_ci(&s_test, &y_test, m, args.bootstrap, 7);
        results.push(json!({
            "method": name,
            "description": description,
            "validation_auroc": validation_auroc,
            "auroc": auroc, "auroc_ci95": ci(probes::auroc),
            "average_precision": ap, "average_precision_ci95": ci(probes::average_precision),
            "recall_at_fpr": recall_at,
            "threshold": threshold,
            "test_fpr_at_threshold": fpr,
            "fresh_fpr_at_threshold": fresh_fpr,
            "precision": precision, "recall": recall, "f1": f1,
            "fitted": fitted,
        }));
    }
    let report = json!({
        "data": args.data,
        "hook": hook.to_string(),
        "template": args.template,
        "dictionary": dictionary_dir,
        "texts": {"train": train.len(), "validation": validation.len(), "test": test.len(),
                  "positive_test": y_test.iter().filter(|&&l| l).count()},
        "target_fpr": args.fpr,
        "split": "FNV-1a hash of the text mod 10: 0-5 train, 6-7 validation, 8-9 test; FPR measured on test negatives",
        "thresholds_from": match &args.control { Some(p) => format!("control set {}", p.display()), None => "validation negatives".into() },
        "fresh_control": args.fresh.as_ref().map(|p| p.display().to_string()),
        "methods": results,
    });
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", out.display()))?;
    }
    if let Some(path) = &args.monitor {
        anyhow::ensure!(args.template.is_none(), "--monitor: monitors read texts as they come; train it without --template");
        let (validation_auroc, method, detector) = best_detector.context("no method gives a detector")?;
        let test = results.iter().find(|r| r["method"] == *method).cloned().unwrap_or_default();
        let data_bytes = std::fs::read(&args.data)?;
        let name = args.name.clone().unwrap_or_else(|| args.data.file_stem().map_or("monitor".into(), |s| s.to_string_lossy().into_owned()));
        let details = json!({
            "method": method,
            "threshold_from": if control.is_some() { "the control set" } else { "validation negatives (FNV-1a split 6-7 of 10)" },
            "data": args.data,
            "validation_auroc": validation_auroc,
            "test": {"auroc": test["auroc"], "test_fpr_at_threshold": test["test_fpr_at_threshold"], "recall": test["recall"], "precision": test["precision"]},
            "model": args.model.model.clone().unwrap_or_else(loupe_query::config::default_model_path),
        });
        let (control_set, control_sha256, control_texts) = match (&control, &args.control) {
            (Some((_, n, sha)), Some(path)) => (path.display().to_string(), sha.clone(), *n),
            _ => (format!("{} (validation negatives)", args.data.display()), loupe_indexer::checksum::sha256_bytes(&data_bytes), validation.iter().filter(|&&i| !data[i].1).count()),
        };
        let calibration = Calibration { target_fpr: args.fpr, control_set, control_sha256, control_texts, threshold: detector.threshold, details: details.as_object().cloned().unwrap_or_default() };
        let detector = Detector { calibration: Some(calibration), ..detector.with_offset_in_bias() };
        let monitor = Monitor { name: name.clone(), description: format!("{method} probe trained by loupe probe train on {}", args.data.display()), detectors: vec![detector.clone()] };
        std::fs::write(path, serde_json::to_string(&monitor)? + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("monitor {name}: {method} (validation AUROC {validation_auroc:.3}), threshold {:.4} at {:.1}% FPR -> {}", detector.threshold, 100.0 * args.fpr, path.display());
    }
    if args.json {
        return print_json(&report);
    }
    let calibrated_on = args.control.as_ref().map_or("validation negatives".to_string(), |p| p.display().to_string());
    println!("{}: {} train / {} validation / {} test texts at {hook}; thresholds at {:.1}% FPR on {calibrated_on}", args.data.display(), train.len(), validation.len(), test.len(), 100.0 * args.fpr);
    println!("{:<17} {:>18} {:>18} {:>8} {:>9} {:>9} {:>9} {:>7} {:>7}", "method", "AUROC (95% CI)", "AP (95% CI)", "R@FPR", "test FPR", "fresh FPR", "precision", "recall", "F1");
    for r in &results {
        let ci = |k: &str| r[k].as_array().map_or(String::new(), |a| format!("{:.3}-{:.3}", a[0].as_f64().unwrap_or(0.0), a[1].as_f64().unwrap_or(0.0)));
        println!(
            "{:<17} {:>6.3} ({:>10}) {:>6.3} ({:>10}) {:>8.3} {:>8.2}% {:>9} {:>9.3} {:>7.3} {:>7.3}",
            r["method"].as_str().unwrap_or(""),
            r["auroc"].as_f64().unwrap_or(0.0),
            ci("auroc_ci95"),
            r["average_precision"].as_f64().unwrap_or(0.0),
            ci("average_precision_ci95"),
            r["recall_at_fpr"].as_f64().unwrap_or(0.0),
            100.0 * r["test_fpr_at_threshold"].as_f64().unwrap_or(0.0),
            r["fresh_fpr_at_threshold"].as_f64().map_or("-".to_string(), |f| format!("{:.2}%", 100.0 * f)),
            r["precision"].as_f64().unwrap_or(0.0),
            r["recall"].as_f64().unwrap_or(0.0),
            r["f1"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(())
}
