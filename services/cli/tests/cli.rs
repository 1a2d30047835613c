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
fn bad_hook_and_missing_model_are_clear_errors() {
    let (ok, _, err) = loupe(&["activations", "--hook", "blocks.9.resid", "Hello"]);
    assert!(!ok);
    assert!(err.contains("unknown hook point 'blocks.9.resid'"), "{err}");
    let (ok, _, err) = loupe(&["tokenize", "x", "--model", "/nonexistent/model.gguf"]);
    assert!(!ok);
    assert!(err.contains("model not found at /nonexistent/model.gguf"), "{err}");
}
