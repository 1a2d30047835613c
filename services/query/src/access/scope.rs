//! Scopes: what a token may do, and the one table that says which scope each RPC needs.

use std::fmt;
use std::str::FromStr;

/// A permission carried by a token. `Admin` grants every other scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Search, dashboards, similar features, tokenize, the vector list.
    Read,
    /// Model calls that read the model: activations, top features for a text.
    Inspect,
    /// Generation with interventions; creating and deleting steering vectors.
    Steer,
    /// Scoring texts with monitors; reading monitors and alerts.
    Monitor,
    /// Creating, updating and deleting monitors; training and evaluating probes.
    MonitorAdmin,
    /// Writing feature labels.
    Label,
    Admin,
}

pub const ALL_SCOPES: [Scope; 7] = [Scope::Read, Scope::Inspect, Scope::Steer, Scope::Monitor, Scope::MonitorAdmin, Scope::Label, Scope::Admin];

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Inspect => "inspect",
            Scope::Steer => "steer",
            Scope::Monitor => "monitor",
            Scope::MonitorAdmin => "monitor-admin",
            Scope::Label => "label",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_SCOPES.iter().copied().find(|scope| scope.name() == s.trim()).ok_or_else(|| {
            let names: Vec<&str> = ALL_SCOPES.iter().map(|s| s.name()).collect();
            format!("unknown scope {s:?}: expected one of {}", names.join(", "))
        })
    }
}

/// The scope an RPC (by its method name, as the adapters name calls) needs. Methods not in
/// the table need `admin`, so a new RPC is closed until someone decides who may call it.
pub fn scope_of(method: &str) -> Scope {
    match method {
        "ListDictionaries" | "SearchFeatures" | "GetFeature" | "SimilarFeatures" | "Tokenize" | "ListVectors" => Scope::Read,
        "TopFeaturesForText" | "GetActivations" => Scope::Inspect,
        "Steer" | "SteerStream" | "CreateVector" | "DeleteVector" => Scope::Steer,
        "Score" | "StreamScore" | "GetMonitor" | "ListMonitors" | "ListAlerts" | "SubscribeAlerts" => Scope::Monitor,
        "CreateMonitor" | "UpdateMonitor" | "DeleteMonitor" | "TrainProbe" | "EvaluateMonitor" => Scope::MonitorAdmin,
        "SetFeatureLabel" => Scope::Label,
        _ => Scope::Admin,
    }
}

/// Whether a method runs the model (and so needs model tokens left in its caller's quota).
pub fn is_model_call(method: &str) -> bool {
    matches!(method, "TopFeaturesForText" | "GetActivations" | "Steer" | "SteerStream" | "CreateVector" | "Score" | "StreamScore" | "TrainProbe" | "EvaluateMonitor")
}

/// Whether `held` grants `needed`.
pub fn grants(held: &[Scope], needed: Scope) -> bool {
    held.iter().any(|&s| s == needed || s == Scope::Admin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_admin_grants_all() {
        for scope in ALL_SCOPES {
            assert_eq!(scope.name().parse::<Scope>().unwrap(), scope);
            assert!(grants(&[Scope::Admin], scope));
        }
        assert!(grants(&[Scope::Read, Scope::Label], Scope::Label));
        assert!(!grants(&[Scope::Read], Scope::Inspect));
        let err = "write".parse::<Scope>().unwrap_err();
        assert!(err.contains("monitor-admin"), "{err}");
        assert_eq!(scope_of("SetFeatureLabel"), Scope::Label);
        assert_eq!(scope_of("SomeFutureCall"), Scope::Admin);
    }
}
