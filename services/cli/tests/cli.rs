//! The `loupe` binary as a user runs it, on the embedded default model.

use std::process::Command;

fn loupe(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loupe")).args(args).output().expect("run loupe");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn generate_answers_a_chat_prompt_deterministically() {
    let args = ["generate", "What is the capital of France?", "--max-tokens", "24", "--json"];
    let (ok, first, err) = loupe(&args);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&first).unwrap();
    let answer = json["completion"].as_str().unwrap();
    assert!(answer.contains("Paris"), "{answer}");
    let (_, second, _) = loupe(&args);
    let again: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert_eq!(json["completion_ids"], again["completion_ids"]);
}

#[test]
fn sampling_with_a_seed_is_reproducible() {
    let args = ["generate", "Once upon a time", "--raw", "--temperature", "0.8", "--top-p", "0.9", "--seed", "7", "--max-tokens", "12", "--json"];
    let (ok, first, err) = loupe(&args);
    assert!(ok, "{err}");
    let (_, second, _) = loupe(&args);
    let a: serde_json::Value = serde_json::from_str(&first).unwrap();
    let b: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert_eq!(a["completion_ids"], b["completion_ids"]);
    assert_eq!(a["completion_ids"].as_array().unwrap().len(), 12);
}

#[test]
fn tokenize_and_activations_report_json() {
    let (ok, out, err) = loupe(&["tokenize", "year 2024", "--json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["tokens"], serde_json::json!(["year", " ", "2", "0", "2", "4"]));

    let (ok, out, err) = loupe(&["activations", "--hook", "blocks.9.hook_resid_post", "--hook", "hook_embed", "Hello world", "--json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["hooks"]["blocks.9.hook_resid_post"]["shape"], serde_json::json!([1, 2, 576]));
    let norms = json["hooks"]["hook_embed"]["norms"].as_array().unwrap();
    assert!(norms.iter().all(|n| n.as_f64().unwrap() > 0.0));
}

#[test]
fn texts_file_gives_one_json_line_per_text_as_single_runs_do() {
    let dir = tempfile::tempdir().unwrap();
    let texts = dir.path().join("texts.jsonl");
    std::fs::write(&texts, "\"Hello world\"\n\n{\"text\": \"The cat sat on the mat\", \"id\": 7}\n").unwrap();
    let texts = texts.to_str().unwrap();
    for command in [&["activations", "--hook", "blocks.9.hook_resid_post"][..], &["dict", "encode", "--top", "4"][..]] {
        let (ok, out, err) = loupe(&[command, &["--texts", texts, "--json"]].concat());
        assert!(ok, "{err}");
        let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{out}");
        for (line, text) in lines.iter().zip(["Hello world", "The cat sat on the mat"]) {
            let (ok, single, err) = loupe(&[command, &[text, "--json"]].concat());
            assert!(ok, "{err}");
            assert_eq!(line, &serde_json::from_str::<serde_json::Value>(&single).unwrap(), "{command:?} on {text:?}");
        }
    }
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "\"fine\"\n{\"body\": \"no text field\"}\n").unwrap();
    let (ok, _, err) = loupe(&["activations", "--hook", "hook_embed", "--texts", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("bad.jsonl line 2: expected a \"text\" field holding a string"), "{err}");
    let (ok, _, err) = loupe(&["dict", "encode", "both", "--texts", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
}

#[test]
fn bench_forward_times_the_lens_with_the_default_and_a_wide_dictionary() {
    let args = ["bench", "forward", "--batch", "2", "--seq", "8", "--layer", "9", "--no-reference", "--repeats", "1", "--min-seconds", "0", "--no-peak"];
    let (ok, out, err) = loupe(&[&args[..], &["--encode", "--wide", "1024", "--json"]].concat());
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(json["matmul_peak_gflops"].is_null() && json["results"][0]["fraction_of_peak"].is_null(), "--no-peak: {out}");
    let rows = json["results"].as_array().unwrap();
    let gflop = |case: &str| {
        let row = rows.iter().find(|r| r["case"] == case).unwrap_or_else(|| panic!("no {case:?} row in {out}"));
        assert!(row["tokens_per_second"].as_f64().unwrap() > 0.0);
        row["gflops"].as_f64().unwrap() * row["seconds"].as_f64().unwrap()
    };
    // The encode adds the encoder's matmul, 2 * d_in * d_sae FLOPs a token, to the forward to
    // the dictionary's layer.
    let forward = gflop("to layer 9");
    for (case, latents) in [("blocks.9.hook_resid_post + 4608 latents", 4608.0), ("blocks.9.hook_resid_post + 1024 random latents", 1024.0)] {
        let encode = 2.0 * 16.0 * 576.0 * latents / 1e9;
        assert!(((gflop(case) - forward) / encode - 1.0).abs() < 1e-6, "{case}: {} vs {forward} + {encode}", gflop(case));
    }
    let (ok, _, err) = loupe(&[&args[..], &["--encode", "--wide", "0"]].concat());
    assert!(!ok && err.contains("--wide takes a number of latents of at least 1"), "{err}");
}

#[test]
fn bad_hook_and_missing_model_are_clear_errors() {
    let (ok, _, err) = loupe(&["activations", "--hook", "blocks.9.resid", "Hello"]);
    assert!(!ok);
    assert!(err.contains("unknown hook point 'blocks.9.resid'"), "{err}");
    let (ok, _, err) = loupe(&["tokenize", "x", "--model", "/nonexistent/model.gguf"]);
    assert!(!ok);
    assert!(err.contains("model not found at /nonexistent/model.gguf"), "{err}");
}

/// A small JSONL corpus of real English sentences, written for the test.
fn tiny_corpus(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("corpus.jsonl");
    let sentences = [
        "The quick brown fox jumps over the lazy dog while the farmer watches from the hill.",
        "In 1969, astronauts landed on the Moon and walked on its dusty grey surface.",
        "def add(a, b):\n    return a + b  # a tiny Python function",
        "Rain fell all night; by morning the river had risen over the old stone bridge.",
        "She counted the coins: 3, 14, 15, 92, and 65 cents in total were missing.",
        "Knowledge is of two kinds: we know a subject ourselves, or we know where to find it.",
    ];
    let lines: Vec<String> = (0..40).map(|i| serde_json::json!({ "text": sentences[i % sentences.len()] }).to_string()).collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

#[test]
fn train_then_info_then_eval_a_dictionary() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = tiny_corpus(dir.path());
    let out = dir.path().join("sae");
    let (ok, _, err) = loupe(&[
        "train",
        "--hook",
        "blocks.3.hook_resid_post",
        "--out",
        out.to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
        "--latents",
        "256",
        "--k",
        "8",
        "--tokens",
        "2048",
        "--batch-tokens",
        "256",
        "--context",
        "32",
        "--buffer-windows",
        "16",
    ]);
    assert!(ok, "{err}");

    let (ok, info, err) = loupe(&["dict", "info", out.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["format"], "sae_lens");
    assert_eq!(info["hook_in"], "blocks.3.hook_resid_post");
    assert_eq!((info["d_in"].as_u64(), info["d_sae"].as_u64()), (Some(576), Some(256)));

    let report_path = dir.path().join("report.json");
    let (ok, report, err) =
        loupe(&["dict", "eval", out.to_str().unwrap(), "--corpus", corpus.to_str().unwrap(), "--tokens", "256", "--context", "32", "--json", "--out", report_path.to_str().unwrap()]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report, serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&report_path).unwrap()).unwrap());
    assert_eq!(report["tokens"], 8 * 31, "8 windows of 32 tokens without their BOS");
    let l0 = report["l0"].as_f64().unwrap();
    assert!(l0 > 0.0 && l0 <= 8.0, "L0 {l0}");
    let ev = report["explained_variance"].as_f64().unwrap();
    assert!(ev > 0.0 && ev < 1.0, "explained variance {ev}");
    let (clean, spliced, zero) = (report["ce_loss_clean"].as_f64().unwrap(), report["ce_loss_spliced"].as_f64().unwrap(), report["ce_loss_zero_ablated"].as_f64().unwrap());
    assert!(clean < spliced && spliced < zero, "clean {clean} < spliced {spliced} < zero-ablated {zero}");
}

#[test]
fn dictionary_errors_name_the_problem() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../engine/tests/fixtures/dictionaries");
    // A dictionary for a 64-wide model against SmolLM2 (576).
    let (ok, _, err) = loupe(&["dict", "eval", fixtures.join("saelens_topk").to_str().unwrap(), "--tokens", "64"]);
    assert!(!ok);
    assert!(err.contains("d_in is 64") && err.contains("width 576"), "{err}");
    let (ok, _, err) = loupe(&["dict", "info", "/nonexistent/sae"]);
    assert!(!ok && err.contains("/nonexistent/sae"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"body\": \"no text field\"}\n").unwrap();
    let (ok, _, err) = loupe(&["train", "--hook", "blocks.3.hook_resid_post", "--out", dir.path().join("o").to_str().unwrap(), "--corpus", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("line 2") && err.contains("\"text\""), "{err}");
    assert_eq!(err.matches(bad.to_str().unwrap()).count(), 1, "the path once: {err}");
}

#[test]
fn dict_encode_lists_the_default_dictionarys_features_per_token() {
    let (ok, out, err) = loupe(&["dict", "encode", "The cat sat on the mat", "--top", "3", "--json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["hook"], "blocks.9.hook_resid_post");
    let tokens = json["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 6);
    for token in tokens {
        let features = token["features"].as_array().unwrap();
        assert_eq!(features.len(), 3, "a TopK-32 SAE has at least 3 active features: {token}");
        let values: Vec<f64> = features.iter().map(|f| f["activation"].as_f64().unwrap()).collect();
        assert!(values.windows(2).all(|w| w[0] >= w[1]) && values[2] > 0.0, "strongest first: {values:?}");
        assert!(features.iter().all(|f| f["feature"].as_u64().unwrap() < 4608));
    }
}

#[test]
fn index_merge_of_zero_shards_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (ok, _, err) = loupe(&["index", "merge", "--shards", "0", "--store", store.to_str().unwrap()]);
    assert!(!ok, "merging 0 shards cannot succeed");
    assert!(err.contains("--shards 0") && err.contains("at least 1"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A monitor file whose one detector is a constant linear probe at layer 3 (zero weights:
/// its value is `bias` at every token), so it crosses at the first generated token or never.
fn constant_monitor(dir: &std::path::Path, name: &str, bias: f32, action: &str) -> std::path::PathBuf {
    let monitor = serde_json::json!({
        "name": name,
        "detectors": [{
            "signal": {"Linear": {"hook": {"Block": {"layer": 3, "site": "ResidPost"}}, "weights": vec![0.0f32; 576], "bias": bias}},
            "aggregation": "Max", "threshold": 0.5, "action": action,
        }],
    });
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, monitor.to_string()).unwrap();
    path
}

#[test]
fn generate_guardrails_block_at_the_token_that_crossed() {
    let dir = tempfile::tempdir().unwrap();
    let plain = ["generate", "What is the capital of France?", "--max-tokens", "8", "--json"];
    let (ok, out, err) = loupe(&plain);
    assert!(ok, "{err}");
    let plain: serde_json::Value = serde_json::from_str(&out).unwrap();
    let with = |monitor: &std::path::Path| {
        let (ok, out, err) = loupe(&["generate", "What is the capital of France?", "--max-tokens", "8", "--json", "--monitor", monitor.to_str().unwrap()]);
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let logged = with(&constant_monitor(dir.path(), "always-log", 1.0, "log"));
    assert_eq!(logged["completion_ids"], plain["completion_ids"], "a log monitor changes nothing");
    assert_eq!((logged["monitors_fired"][0]["token"].as_u64(), logged["blocked"].as_bool()), (Some(0), Some(false)));
    let blocked = with(&constant_monitor(dir.path(), "always-block", 1.0, "block"));
    assert_eq!(blocked["completion_ids"].as_array().unwrap().as_slice(), &plain["completion_ids"].as_array().unwrap()[..1], "stopped after the first token");
    assert_eq!(blocked["blocked"], true);
    let quiet = with(&constant_monitor(dir.path(), "never", -1.0, "block"));
    assert_eq!((quiet["completion_ids"].clone(), quiet["monitors_fired"].as_array().unwrap().len()), (plain["completion_ids"].clone(), 0));
}

/// Every command handed a missing path, a file of the wrong kind or an unreachable server
/// says so in one line naming it: no backtrace (even with RUST_BACKTRACE=1), no panic, no
/// cause repeated.
#[test]
fn bad_paths_and_files_give_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (missing, garbage, not_json, folder) = (path("missing.bin"), path("garbage.gguf"), path("notes.json"), dir.path().display().to_string());
    std::fs::write(&garbage, b"\x00\x01 not a model at all").unwrap();
    std::fs::write(&not_json, "this is not JSON {").unwrap();
    let store = path("store");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["generate", "hi", "--model", &garbage], &garbage),
        (vec!["generate", "hi", "--model", &missing], &missing),
        (vec!["generate", "hi", "--monitor", &not_json], &not_json),
        (vec!["tokenize", "hi", "--model", &garbage], &garbage),
        (vec!["activations", "hi", "--hook", "hook_embed", "--model", &folder], &folder),
        (vec!["dict", "info", &missing], &missing),
        (vec!["dict", "info", &garbage], &garbage),
        (vec!["index", "--corpus", &missing, "--store", &store], &missing),
        (vec!["train", "--hook", "blocks.9.hook_resid_post", "--out", &store, "--corpus", &missing], &missing),
        (vec!["score", "hi", "--monitor", &missing], &missing),
        (vec!["score", "hi", "--monitor", &not_json], &not_json),
        (vec!["monitor", "create", &missing], &missing),
        (vec!["probe", "train", "--data", &missing], &missing),
        (vec!["serve", "--store", &missing], &missing),
        (vec!["serve", "--store", &folder, "--tls-cert", &missing, "--tls-key", &garbage], &missing),
        (vec!["token", "list", "--file", &folder], &folder),
        (vec!["tls", "create", &garbage], &garbage),
        (vec!["search", "word", "--server", "http://127.0.0.1:9"], "127.0.0.1:9"),
    ];
    for (args, named) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_loupe")).args(&args).env("RUST_BACKTRACE", "1").env_remove("LOUPE_LOG").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let shown = format!("loupe {}: {err}", args.join(" "));
        assert!(!out.status.success(), "{shown}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line: {shown}");
        assert!(lines[0].starts_with("error: ") && lines[0].contains(named), "{shown}");
        assert!(!err.contains("panicked") && !err.contains("backtrace"), "{shown}");
        for cause in lines[0].split(": ").filter(|c| c.len() > 12) {
            assert_eq!(lines[0].matches(cause).count(), 1, "{cause:?} said twice: {shown}");
        }
    }
}

#[test]
fn export_writes_every_row_of_a_dictionary_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let a = loupe_store::synthetic::synthetic_dictionary("a", 40, 4, 1);
    let b = loupe_store::synthetic::synthetic_dictionary("b", 7, 4, 2);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let writer = rt.block_on(loupe_store::StoreWriter::open_or_create(&loupe_store::Location::local(&store))).unwrap();
    rt.block_on(writer.commit(&[a.clone(), b])).unwrap();
    drop(writer);
    let store_arg = store.to_str().unwrap();
    let (ok, _, err) = loupe(&["export", "--store", store_arg, "--table", "features"]);
    assert!(!ok && err.contains("2 dictionaries") && err.contains("--dictionary"), "{err}");
    let (ok, _, err) = loupe(&["export", "--store", store_arg, "--table", "features", "--dictionary", "zzz"]);
    assert!(!ok && err.contains("\"zzz\" is not in"), "{err}");

    let (ok, out, err) = loupe(&["export", "--store", store_arg, "--table", "features", "--dictionary", "a"]);
    assert!(ok, "{err}");
    let mut features: Vec<loupe_store::FeatureRecord> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    features.sort_by_key(|f| f.feature);
    assert_eq!(features.len(), a.features.len());
    for (read, written) in features.iter_mut().zip(&a.features) {
        // serde_json parses f64 to within an ulp (exact round trips need its float_roundtrip).
        assert!((read.density - written.density).abs() <= 1e-15 * written.density.abs());
        read.density = written.density;
        assert_eq!(read, written);
    }
    let path = dir.path().join("examples.jsonl");
    let (ok, _, err) = loupe(&["export", "--store", store_arg, "--table", "examples", "--dictionary", "a", "--out", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    let mut examples: Vec<loupe_store::ExampleRecord> = std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut expected = a.examples.clone();
    loupe_store::dashboards::sort_examples(&mut examples);
    loupe_store::dashboards::sort_examples(&mut expected);
    assert_eq!(examples, expected);
}
