//! The probes against scikit-learn (reference/probe_reference.py): logistic regression's
//! coefficients at several regularisation strengths, AUROC and average precision with ties.

use loupe_train::probes::{auroc, average_precision, logistic_regression};

#[test]
fn probes_match_scikit_learn() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/probe_reference.json");
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let x: Vec<Vec<f32>> = serde_json::from_value(reference["x"].clone()).unwrap();
    let y: Vec<bool> = serde_json::from_value(reference["y"].clone()).unwrap();
    for fit in reference["fits"].as_array().unwrap() {
        let c = fit["C"].as_f64().unwrap();
        let coef: Vec<f64> = serde_json::from_value(fit["coef"].clone()).unwrap();
        let intercept = fit["intercept"].as_f64().unwrap();
        // scikit-learn minimises C·Σ loss + |w|²/2, i.e. mean loss + |w|²/(2·C·n).
        let probe = logistic_regression(&x, &y, 1.0 / (c * x.len() as f64));
        let scale = coef.iter().fold(intercept.abs(), |m, v| m.max(v.abs()));
        for (j, (&ours, &theirs)) in probe.weights.iter().zip(&coef).enumerate() {
            assert!((ours as f64 - theirs).abs() <= 1e-3 * scale, "C = {c}, weight {j}: {ours} vs scikit-learn's {theirs}");
        }
        assert!((probe.bias as f64 - intercept).abs() <= 1e-3 * scale, "C = {c}: bias {} vs {intercept}", probe.bias);
    }
    let scores: Vec<f32> = serde_json::from_value(reference["scores"].clone()).unwrap();
    let labels: Vec<bool> = serde_json::from_value(reference["labels"].clone()).unwrap();
    assert!((auroc(&scores, &labels) - reference["auroc"].as_f64().unwrap()).abs() < 1e-9);
    assert!((average_precision(&scores, &labels) - reference["average_precision"].as_f64().unwrap()).abs() < 1e-9);
}
