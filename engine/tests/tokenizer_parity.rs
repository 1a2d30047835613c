//! The GGUF-built tokenizer against transformers' tokenizer for the same file, on >= 200
//! strings (unicode, emoji, code, digits, whitespace runs, chat special tokens).

mod common;

#[test]
fn encode_and_decode_match_transformers() {
    let tokenizer = common::smollm2().tokenizer().unwrap();
    let text = std::fs::read_to_string(common::fixtures().join("tokenizer_cases.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() >= 200);
    let mut failures = Vec::new();
    for case in &cases {
        let input = case["text"].as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let encoded = tokenizer.encode(input).unwrap();
        if encoded != ids {
            failures.push(format!("encode {input:?}: got {encoded:?}, transformers {ids:?}"));
        }
        let decoded = tokenizer.decode(&ids).unwrap();
        if decoded != case["decoded"].as_str().unwrap() {
            failures.push(format!("decode {ids:?}: got {decoded:?}, transformers {:?}", case["decoded"]));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn digits_are_split_one_by_one_and_special_tokens_are_atomic() {
    let tokenizer = common::smollm2().tokenizer().unwrap();
    let ids = tokenizer.encode("<|im_start|>user 2024").unwrap();
    let pieces = tokenizer.token_strings(&ids).unwrap();
    assert_eq!(pieces, vec!["<|im_start|>", "user", " ", "2", "0", "2", "4"]);
    assert_eq!(tokenizer.token_to_id("<|im_start|>"), Some(1));
}
