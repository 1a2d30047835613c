//! Monitor definitions between the wire and the engine: proto -> `Monitor` (checked once,
//! against the model, the store's dictionaries and its stored vectors, with errors that name
//! the field), and back.

use loupe_engine::monitor::{Action, Aggregation, Calibration, Detector, Monitor, Scope, Severity, Signal};
use loupe_engine::HookPoint;
use loupe_schema::proto::v1 as pb;

use crate::error::{Result, ServiceError};
use crate::state::AppState;

fn invalid(field: String, what: impl std::fmt::Display) -> ServiceError {
    ServiceError::InvalidArgument(format!("{field}: {what}"))
}

/// The definition as the engine holds it (thresholds still to calibrate are left at 0 and
/// reported in the second value: detector index and request).
pub fn from_proto(d: pb::MonitorDefinition) -> Result<(Monitor, Vec<(usize, pb::CalibrateRequest)>)> {
    loupe_store::named_vectors::check_named("monitor", &d.name).map_err(|e| ServiceError::InvalidArgument(format!("definition.name: {e}")))?;
    // Shown in terminals and pages: one line of printable text, as labels are.
    loupe_store::labels::check_label(&d.description).map_err(|e| ServiceError::InvalidArgument(format!("definition.description: {e}")))?;
    let mut detectors = Vec::with_capacity(d.detectors.len());
    let mut to_calibrate = Vec::new();
    for (i, p) in d.detectors.into_iter().enumerate() {
        let at = |f: &str| format!("definition.detectors[{i}].{f}");
        let signal = match p.signal.and_then(|s| s.signal) {
            None => return Err(invalid(at("signal"), "is missing: give feature, features, linear or vector_name")),
            Some(pb::signal::Signal::Feature(f)) => Signal::Feature { dictionary: f.dictionary_id, feature: f.feature },
            Some(pb::signal::Signal::Features(f)) => Signal::Features { dictionary: f.dictionary_id, weights: f.weights.iter().map(|w| (w.feature, w.weight)).collect(), bias: f.bias },
            Some(pb::signal::Signal::Linear(l)) => {
                let hook: HookPoint = l.hook.parse().map_err(|e| invalid(at("signal.linear.hook"), e))?;
                Signal::Linear { hook, weights: l.weights, bias: l.bias }
            }
            Some(pb::signal::Signal::VectorName(name)) => Signal::Vector { name },
        };
        let aggregation = match pb::Aggregation::try_from(p.aggregation).map_err(|_| invalid(at("aggregation"), format!("{} is not an aggregation", p.aggregation)))? {
            pb::Aggregation::Max => Aggregation::Max,
            pb::Aggregation::Mean => Aggregation::Mean,
            pb::Aggregation::Last => Aggregation::Last,
            pb::Aggregation::RollingMean => Aggregation::RollingMean { window: p.window as usize },
        };
        let severity = severity_from_proto(p.severity, &at("severity"))?;
        let action = action_from_proto(p.action, &at("action"))?;
        for role in &p.roles {
            if role.is_empty() || role.len() > 64 || role.chars().any(char::is_control) {
                return Err(invalid(at("roles"), format!("{role:?} is not a role name (1-64 printable characters)")));
            }
        }
        let mut threshold = p.threshold;
        if let Some(c) = p.calibrate {
            if !(c.target_fpr > 0.0 && c.target_fpr < 1.0) {
                return Err(invalid(at("calibrate.target_fpr"), format!("{} must be in (0, 1)", c.target_fpr)));
            }
            if c.control_texts.is_empty() {
                return Err(invalid(at("calibrate.control_texts"), "is empty: give texts that should not fire"));
            }
            threshold = 0.0;
            to_calibrate.push((i, c));
        }
        // A recorded calibration travels with its definition (a file from `loupe probe train`,
        // a monitor read back and written again); a new calibration replaces it.
        let calibration = match (&to_calibrate.last(), p.calibration) {
            (Some((j, _)), _) if *j == i => None,
            (_, Some(c)) => Some(Calibration {
                target_fpr: c.target_fpr,
                control_set: c.control_set,
                control_sha256: c.control_sha256,
                control_texts: c.control_texts as usize,
                threshold: c.threshold,
                details: match serde_json::from_str::<serde_json::Value>(if c.details_json.is_empty() { "{}" } else { &c.details_json }) {
                    Ok(serde_json::Value::Object(map)) => map,
                    _ => return Err(invalid(at("calibration.details_json"), "is not a JSON object")),
                },
            }),
            (_, None) => None,
        };
        detectors.push(Detector { signal, aggregation, threshold, scope: Scope { roles: p.roles }, severity, action, calibration });
    }
    let monitor = Monitor { name: d.name, description: d.description, detectors };
    monitor.validate().map_err(|e| ServiceError::InvalidArgument(format!("definition.{}", e.to_string().trim_start_matches("invalid input: "))))?;
    Ok((monitor, to_calibrate))
}

/// Checks every detector against what this server runs: dictionaries loaded and features in
/// range, hooks inside the model with the probe's width, stored vectors present and made on
/// this model. Returns the detectors ready to score (stored vectors resolved).
pub async fn resolve(state: &AppState, monitor: &Monitor) -> Result<Vec<Detector>> {
    let lens = state.engine()?;
    let config = lens.model().config();
    let snapshot = state.snapshot();
    let mut out = Vec::with_capacity(monitor.detectors.len());
    for (i, d) in monitor.detectors.iter().enumerate() {
        let at = |f: &str| format!("definition.detectors[{i}].signal.{f}");
        let check_dictionary = |id: &str| -> Result<usize> {
            let record = snapshot.dictionaries.get(id).ok_or_else(|| invalid(at("dictionary_id"), format!("no dictionary {id:?} in the store")))?;
            if lens.position(id).is_none() {
                return Err(invalid(at("dictionary_id"), format!("dictionary {id:?} has no files on this server, so it cannot be run")));
            }
            Ok(record.d_sae as usize)
        };
        let check_hook = |hook: &HookPoint, width: usize, field: &str| -> Result<()> {
            let expected = config.hook_width(*hook).ok_or_else(|| invalid(at(field), format!("{hook} is not a hook of this model ({} layers)", config.n_layers)))?;
            if expected != width {
                return Err(invalid(at("weights"), format!("{width} weights, but {hook} has width {expected}")));
            }
            Ok(())
        };
        let signal = match &d.signal {
            Signal::Feature { dictionary, feature } => {
                let d_sae = check_dictionary(dictionary)?;
                if *feature as usize >= d_sae {
                    return Err(invalid(at("feature"), format!("feature {feature} is out of range: {dictionary:?} has {d_sae} features")));
                }
                d.signal.clone()
            }
            Signal::Features { dictionary, weights, .. } => {
                let d_sae = check_dictionary(dictionary)?;
                if let Some((f, _)) = weights.iter().find(|(f, _)| *f as usize >= d_sae) {
                    return Err(invalid(at("weights"), format!("feature {f} is out of range: {dictionary:?} has {d_sae} features")));
                }
                d.signal.clone()
            }
            Signal::Linear { hook, weights, .. } => {
                check_hook(hook, weights.len(), "hook")?;
                d.signal.clone()
            }
            Signal::Vector { name } => {
                let vector = loupe_store::named_vector(&state.store_root, name)
                    .await
                    .map_err(|e| invalid(at("vector_name"), e))?
                    .ok_or_else(|| invalid(at("vector_name"), format!("no stored vector {name:?} (Steering.CreateVector makes one)")))?;
                if state.model_checksum.as_deref().is_some_and(|m| m != vector.model_checksum) {
                    return Err(invalid(at("vector_name"), format!("vector {name:?} was made on another model")));
                }
                let hook: HookPoint = vector.hook.parse().map_err(|e| invalid(at("vector_name"), e))?;
                let weights = vector.direction.unwrap_or_default();
                check_hook(&hook, weights.len(), "vector_name")?;
                Signal::Linear { hook, weights, bias: 0.0 }
            }
        };
        out.push(Detector { signal, ..d.clone() });
    }
    Ok(out)
}

/// A request's severity (UNSPECIFIED: medium); `field` names it in the error.
pub fn severity_from_proto(value: i32, field: &str) -> Result<Severity> {
    Ok(match pb::Severity::try_from(value).map_err(|_| invalid(field.to_string(), format!("{value} is not a severity")))? {
        pb::Severity::Unspecified | pb::Severity::Medium => Severity::Medium,
        pb::Severity::Low => Severity::Low,
        pb::Severity::High => Severity::High,
        pb::Severity::Critical => Severity::Critical,
    })
}

/// A request's action (UNSPECIFIED: alert); `field` names it in the error.
pub fn action_from_proto(value: i32, field: &str) -> Result<Action> {
    Ok(match pb::Action::try_from(value).map_err(|_| invalid(field.to_string(), format!("{value} is not an action")))? {
        pb::Action::Unspecified | pb::Action::Alert => Action::Alert,
        pb::Action::Log => Action::Log,
        pb::Action::Block => Action::Block,
    })
}

pub fn severity_to_proto(s: Severity) -> pb::Severity {
    match s {
        Severity::Low => pb::Severity::Low,
        Severity::Medium => pb::Severity::Medium,
        Severity::High => pb::Severity::High,
        Severity::Critical => pb::Severity::Critical,
    }
}

pub fn action_to_proto(a: Action) -> pb::Action {
    match a {
        Action::Log => pb::Action::Log,
        Action::Alert => pb::Action::Alert,
        Action::Block => pb::Action::Block,
    }
}

/// Lowercase names, as the alerts table stores them.
pub fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

pub fn action_name(a: Action) -> &'static str {
    match a {
        Action::Log => "log",
        Action::Alert => "alert",
        Action::Block => "block",
    }
}

pub fn severity_from_name(name: &str) -> pb::Severity {
    match name {
        "low" => pb::Severity::Low,
        "high" => pb::Severity::High,
        "critical" => pb::Severity::Critical,
        _ => pb::Severity::Medium,
    }
}

pub fn action_from_name(name: &str) -> pb::Action {
    match name {
        "log" => pb::Action::Log,
        "block" => pb::Action::Block,
        _ => pb::Action::Alert,
    }
}

fn calibration_to_proto(c: &Calibration) -> pb::Calibration {
    pb::Calibration {
        target_fpr: c.target_fpr,
        control_set: c.control_set.clone(),
        control_sha256: c.control_sha256.clone(),
        control_texts: c.control_texts as u32,
        threshold: c.threshold,
        details_json: serde_json::Value::Object(c.details.clone()).to_string(),
    }
}

pub fn to_proto(m: &Monitor) -> pb::MonitorDefinition {
    pb::MonitorDefinition { name: m.name.clone(), description: m.description.clone(), detectors: m.detectors.iter().map(detector_to_proto).collect() }
}

pub fn detector_to_proto(d: &Detector) -> pb::Detector {
    let (aggregation, window) = match d.aggregation {
        Aggregation::Max => (pb::Aggregation::Max, 0),
        Aggregation::Mean => (pb::Aggregation::Mean, 0),
        Aggregation::Last => (pb::Aggregation::Last, 0),
        Aggregation::RollingMean { window } => (pb::Aggregation::RollingMean, window as u32),
    };
    let signal = match &d.signal {
        Signal::Feature { dictionary, feature } => pb::signal::Signal::Feature(crate::convert::feature_ref(dictionary, *feature).unwrap_or_default()),
        Signal::Features { dictionary, weights, bias } => pb::signal::Signal::Features(pb::FeatureSet {
            dictionary_id: dictionary.clone(),
            weights: weights.iter().map(|&(feature, weight)| pb::WeightedFeature { feature, weight }).collect(),
            bias: *bias,
        }),
        Signal::Linear { hook, weights, bias } => pb::signal::Signal::Linear(pb::LinearProbe { hook: hook.to_string(), weights: weights.clone(), bias: *bias }),
        Signal::Vector { name } => pb::signal::Signal::VectorName(name.clone()),
    };
    pb::Detector {
        signal: Some(pb::Signal { signal: Some(signal) }),
        aggregation: aggregation as i32,
        window,
        roles: d.scope.roles.clone(),
        threshold: d.threshold,
        calibrate: None,
        calibration: d.calibration.as_ref().map(calibration_to_proto),
        severity: severity_to_proto(d.severity) as i32,
        action: action_to_proto(d.action) as i32,
    }
}
