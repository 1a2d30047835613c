from . import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Aggregation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_MAX: _ClassVar[Aggregation]
    AGGREGATION_MEAN: _ClassVar[Aggregation]
    AGGREGATION_ROLLING_MEAN: _ClassVar[Aggregation]
    AGGREGATION_LAST: _ClassVar[Aggregation]

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_LOW: _ClassVar[Severity]
    SEVERITY_MEDIUM: _ClassVar[Severity]
    SEVERITY_HIGH: _ClassVar[Severity]
    SEVERITY_CRITICAL: _ClassVar[Severity]

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    ACTION_LOG: _ClassVar[Action]
    ACTION_ALERT: _ClassVar[Action]
    ACTION_BLOCK: _ClassVar[Action]

class ProbeMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROBE_METHOD_LOGISTIC: _ClassVar[ProbeMethod]
    PROBE_METHOD_DIFFMEAN: _ClassVar[ProbeMethod]
    PROBE_METHOD_SPARSE: _ClassVar[ProbeMethod]
AGGREGATION_MAX: Aggregation
AGGREGATION_MEAN: Aggregation
AGGREGATION_ROLLING_MEAN: Aggregation
AGGREGATION_LAST: Aggregation
SEVERITY_UNSPECIFIED: Severity
SEVERITY_LOW: Severity
SEVERITY_MEDIUM: Severity
SEVERITY_HIGH: Severity
SEVERITY_CRITICAL: Severity
ACTION_UNSPECIFIED: Action
ACTION_LOG: Action
ACTION_ALERT: Action
ACTION_BLOCK: Action
PROBE_METHOD_LOGISTIC: ProbeMethod
PROBE_METHOD_DIFFMEAN: ProbeMethod
PROBE_METHOD_SPARSE: ProbeMethod

class WeightedFeature(_message.Message):
    __slots__ = ("feature", "weight")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    feature: int
    weight: float
    def __init__(self, feature: _Optional[int] = ..., weight: _Optional[float] = ...) -> None: ...

class FeatureSet(_message.Message):
    __slots__ = ("dictionary_id", "weights", "bias")
    DICTIONARY_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    dictionary_id: str
    weights: _containers.RepeatedCompositeFieldContainer[WeightedFeature]
    bias: float
    def __init__(self, dictionary_id: _Optional[str] = ..., weights: _Optional[_Iterable[_Union[WeightedFeature, _Mapping]]] = ..., bias: _Optional[float] = ...) -> None: ...

class LinearProbe(_message.Message):
    __slots__ = ("hook", "weights", "bias")
    HOOK_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    hook: str
    weights: _containers.RepeatedScalarFieldContainer[float]
    bias: float
    def __init__(self, hook: _Optional[str] = ..., weights: _Optional[_Iterable[float]] = ..., bias: _Optional[float] = ...) -> None: ...

class Signal(_message.Message):
    __slots__ = ("feature", "features", "linear", "vector_name")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LINEAR_FIELD_NUMBER: _ClassVar[int]
    VECTOR_NAME_FIELD_NUMBER: _ClassVar[int]
    feature: _common_pb2.FeatureRef
    features: FeatureSet
    linear: LinearProbe
    vector_name: str
    def __init__(self, feature: _Optional[_Union[_common_pb2.FeatureRef, _Mapping]] = ..., features: _Optional[_Union[FeatureSet, _Mapping]] = ..., linear: _Optional[_Union[LinearProbe, _Mapping]] = ..., vector_name: _Optional[str] = ...) -> None: ...

class CalibrateRequest(_message.Message):
    __slots__ = ("target_fpr", "control_set", "control_texts")
    TARGET_FPR_FIELD_NUMBER: _ClassVar[int]
    CONTROL_SET_FIELD_NUMBER: _ClassVar[int]
    CONTROL_TEXTS_FIELD_NUMBER: _ClassVar[int]
    target_fpr: float
    control_set: str
    control_texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, target_fpr: _Optional[float] = ..., control_set: _Optional[str] = ..., control_texts: _Optional[_Iterable[str]] = ...) -> None: ...

class Calibration(_message.Message):
    __slots__ = ("target_fpr", "control_set", "control_sha256", "control_texts", "threshold", "details_json")
    TARGET_FPR_FIELD_NUMBER: _ClassVar[int]
    CONTROL_SET_FIELD_NUMBER: _ClassVar[int]
    CONTROL_SHA256_FIELD_NUMBER: _ClassVar[int]
    CONTROL_TEXTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    target_fpr: float
    control_set: str
    control_sha256: str
    control_texts: int
    threshold: float
    details_json: str
    def __init__(self, target_fpr: _Optional[float] = ..., control_set: _Optional[str] = ..., control_sha256: _Optional[str] = ..., control_texts: _Optional[int] = ..., threshold: _Optional[float] = ..., details_json: _Optional[str] = ...) -> None: ...

class Detector(_message.Message):
    __slots__ = ("signal", "aggregation", "window", "roles", "threshold", "calibrate", "calibration", "severity", "action")
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CALIBRATE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    signal: Signal
    aggregation: Aggregation
    window: int
    roles: _containers.RepeatedScalarFieldContainer[str]
    threshold: float
    calibrate: CalibrateRequest
    calibration: Calibration
    severity: Severity
    action: Action
    def __init__(self, signal: _Optional[_Union[Signal, _Mapping]] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., window: _Optional[int] = ..., roles: _Optional[_Iterable[str]] = ..., threshold: _Optional[float] = ..., calibrate: _Optional[_Union[CalibrateRequest, _Mapping]] = ..., calibration: _Optional[_Union[Calibration, _Mapping]] = ..., severity: _Optional[_Union[Severity, str]] = ..., action: _Optional[_Union[Action, str]] = ...) -> None: ...

class MonitorDefinition(_message.Message):
    __slots__ = ("name", "description", "detectors")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DETECTORS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    detectors: _containers.RepeatedCompositeFieldContainer[Detector]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., detectors: _Optional[_Iterable[_Union[Detector, _Mapping]]] = ...) -> None: ...

class MonitorInfo(_message.Message):
    __slots__ = ("definition", "version", "archived", "author", "created_at")
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    definition: MonitorDefinition
    version: int
    archived: bool
    author: str
    created_at: str
    def __init__(self, definition: _Optional[_Union[MonitorDefinition, _Mapping]] = ..., version: _Optional[int] = ..., archived: _Optional[bool] = ..., author: _Optional[str] = ..., created_at: _Optional[str] = ...) -> None: ...

class CreateMonitorRequest(_message.Message):
    __slots__ = ("definition", "author")
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    definition: MonitorDefinition
    author: str
    def __init__(self, definition: _Optional[_Union[MonitorDefinition, _Mapping]] = ..., author: _Optional[str] = ...) -> None: ...

class UpdateMonitorRequest(_message.Message):
    __slots__ = ("definition", "author")
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    definition: MonitorDefinition
    author: str
    def __init__(self, definition: _Optional[_Union[MonitorDefinition, _Mapping]] = ..., author: _Optional[str] = ...) -> None: ...

class GetMonitorRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ListMonitorsRequest(_message.Message):
    __slots__ = ("include_archived",)
    INCLUDE_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    include_archived: bool
    def __init__(self, include_archived: _Optional[bool] = ...) -> None: ...

class ListMonitorsResponse(_message.Message):
    __slots__ = ("monitors",)
    MONITORS_FIELD_NUMBER: _ClassVar[int]
    monitors: _containers.RepeatedCompositeFieldContainer[MonitorInfo]
    def __init__(self, monitors: _Optional[_Iterable[_Union[MonitorInfo, _Mapping]]] = ...) -> None: ...

class DeleteMonitorRequest(_message.Message):
    __slots__ = ("name", "author")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    author: str
    def __init__(self, name: _Optional[str] = ..., author: _Optional[str] = ...) -> None: ...

class LabelledText(_message.Message):
    __slots__ = ("text", "label")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    text: str
    label: bool
    def __init__(self, text: _Optional[str] = ..., label: _Optional[bool] = ...) -> None: ...

class TrainProbeRequest(_message.Message):
    __slots__ = ("hook", "examples", "method", "target_fpr", "monitor_name", "severity", "action", "author", "dictionary_id", "k")
    HOOK_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FPR_FIELD_NUMBER: _ClassVar[int]
    MONITOR_NAME_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    DICTIONARY_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    hook: str
    examples: _containers.RepeatedCompositeFieldContainer[LabelledText]
    method: ProbeMethod
    target_fpr: float
    monitor_name: str
    severity: Severity
    action: Action
    author: str
    dictionary_id: str
    k: int
    def __init__(self, hook: _Optional[str] = ..., examples: _Optional[_Iterable[_Union[LabelledText, _Mapping]]] = ..., method: _Optional[_Union[ProbeMethod, str]] = ..., target_fpr: _Optional[float] = ..., monitor_name: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ..., action: _Optional[_Union[Action, str]] = ..., author: _Optional[str] = ..., dictionary_id: _Optional[str] = ..., k: _Optional[int] = ...) -> None: ...

class ProbeReport(_message.Message):
    __slots__ = ("train_texts", "validation_texts", "test_texts", "l2", "validation_auroc", "test_auroc", "test_fpr_at_threshold", "test_recall_at_threshold", "split", "bag_of_words_test_auroc")
    TRAIN_TEXTS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_TEXTS_FIELD_NUMBER: _ClassVar[int]
    TEST_TEXTS_FIELD_NUMBER: _ClassVar[int]
    L2_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_AUROC_FIELD_NUMBER: _ClassVar[int]
    TEST_AUROC_FIELD_NUMBER: _ClassVar[int]
    TEST_FPR_AT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TEST_RECALL_AT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    BAG_OF_WORDS_TEST_AUROC_FIELD_NUMBER: _ClassVar[int]
    train_texts: int
    validation_texts: int
    test_texts: int
    l2: float
    validation_auroc: float
    test_auroc: float
    test_fpr_at_threshold: float
    test_recall_at_threshold: float
    split: str
    bag_of_words_test_auroc: float
    def __init__(self, train_texts: _Optional[int] = ..., validation_texts: _Optional[int] = ..., test_texts: _Optional[int] = ..., l2: _Optional[float] = ..., validation_auroc: _Optional[float] = ..., test_auroc: _Optional[float] = ..., test_fpr_at_threshold: _Optional[float] = ..., test_recall_at_threshold: _Optional[float] = ..., split: _Optional[str] = ..., bag_of_words_test_auroc: _Optional[float] = ...) -> None: ...

class TrainProbeResponse(_message.Message):
    __slots__ = ("detector", "report", "monitor")
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    detector: Detector
    report: ProbeReport
    monitor: MonitorInfo
    def __init__(self, detector: _Optional[_Union[Detector, _Mapping]] = ..., report: _Optional[_Union[ProbeReport, _Mapping]] = ..., monitor: _Optional[_Union[MonitorInfo, _Mapping]] = ...) -> None: ...

class EvaluateMonitorRequest(_message.Message):
    __slots__ = ("monitor", "version", "examples", "bootstrap", "target_fpr")
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_FIELD_NUMBER: _ClassVar[int]
    TARGET_FPR_FIELD_NUMBER: _ClassVar[int]
    monitor: str
    version: int
    examples: _containers.RepeatedCompositeFieldContainer[LabelledText]
    bootstrap: int
    target_fpr: float
    def __init__(self, monitor: _Optional[str] = ..., version: _Optional[int] = ..., examples: _Optional[_Iterable[_Union[LabelledText, _Mapping]]] = ..., bootstrap: _Optional[int] = ..., target_fpr: _Optional[float] = ...) -> None: ...

class Estimate(_message.Message):
    __slots__ = ("value", "low", "high")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    value: float
    low: float
    high: float
    def __init__(self, value: _Optional[float] = ..., low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class DetectorEvaluation(_message.Message):
    __slots__ = ("detector", "auroc", "average_precision", "recall_at_fpr", "threshold", "precision", "recall", "f1", "fpr")
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    AUROC_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_AT_FPR_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    FPR_FIELD_NUMBER: _ClassVar[int]
    detector: int
    auroc: Estimate
    average_precision: Estimate
    recall_at_fpr: Estimate
    threshold: float
    precision: Estimate
    recall: Estimate
    f1: Estimate
    fpr: Estimate
    def __init__(self, detector: _Optional[int] = ..., auroc: _Optional[_Union[Estimate, _Mapping]] = ..., average_precision: _Optional[_Union[Estimate, _Mapping]] = ..., recall_at_fpr: _Optional[_Union[Estimate, _Mapping]] = ..., threshold: _Optional[float] = ..., precision: _Optional[_Union[Estimate, _Mapping]] = ..., recall: _Optional[_Union[Estimate, _Mapping]] = ..., f1: _Optional[_Union[Estimate, _Mapping]] = ..., fpr: _Optional[_Union[Estimate, _Mapping]] = ...) -> None: ...

class EvaluateMonitorResponse(_message.Message):
    __slots__ = ("monitor", "version", "positives", "negatives", "detectors", "precision", "recall", "fpr")
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POSITIVES_FIELD_NUMBER: _ClassVar[int]
    NEGATIVES_FIELD_NUMBER: _ClassVar[int]
    DETECTORS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    FPR_FIELD_NUMBER: _ClassVar[int]
    monitor: str
    version: int
    positives: int
    negatives: int
    detectors: _containers.RepeatedCompositeFieldContainer[DetectorEvaluation]
    precision: Estimate
    recall: Estimate
    fpr: Estimate
    def __init__(self, monitor: _Optional[str] = ..., version: _Optional[int] = ..., positives: _Optional[int] = ..., negatives: _Optional[int] = ..., detectors: _Optional[_Iterable[_Union[DetectorEvaluation, _Mapping]]] = ..., precision: _Optional[_Union[Estimate, _Mapping]] = ..., recall: _Optional[_Union[Estimate, _Mapping]] = ..., fpr: _Optional[_Union[Estimate, _Mapping]] = ...) -> None: ...

class ScoreInput(_message.Message):
    __slots__ = ("text", "messages", "id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    id: str
    def __init__(self, text: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., id: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("inputs", "monitors", "explain_features", "caller")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    MONITORS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FEATURES_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[ScoreInput]
    monitors: _containers.RepeatedScalarFieldContainer[str]
    explain_features: int
    caller: str
    def __init__(self, inputs: _Optional[_Iterable[_Union[ScoreInput, _Mapping]]] = ..., monitors: _Optional[_Iterable[str]] = ..., explain_features: _Optional[int] = ..., caller: _Optional[str] = ...) -> None: ...

class Span(_message.Message):
    __slots__ = ("token_start", "token_end", "char_start", "char_end", "peak_token", "peak_value", "text")
    TOKEN_START_FIELD_NUMBER: _ClassVar[int]
    TOKEN_END_FIELD_NUMBER: _ClassVar[int]
    CHAR_START_FIELD_NUMBER: _ClassVar[int]
    CHAR_END_FIELD_NUMBER: _ClassVar[int]
    PEAK_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PEAK_VALUE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    token_start: int
    token_end: int
    char_start: int
    char_end: int
    peak_token: int
    peak_value: float
    text: str
    def __init__(self, token_start: _Optional[int] = ..., token_end: _Optional[int] = ..., char_start: _Optional[int] = ..., char_end: _Optional[int] = ..., peak_token: _Optional[int] = ..., peak_value: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class FeatureContribution(_message.Message):
    __slots__ = ("feature", "activation", "contribution", "label")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    feature: _common_pb2.FeatureRef
    activation: float
    contribution: float
    label: str
    def __init__(self, feature: _Optional[_Union[_common_pb2.FeatureRef, _Mapping]] = ..., activation: _Optional[float] = ..., contribution: _Optional[float] = ..., label: _Optional[str] = ...) -> None: ...

class DetectorResult(_message.Message):
    __slots__ = ("detector", "score", "threshold", "fired", "spans", "explanation", "explained_token")
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FIRED_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    EXPLAINED_TOKEN_FIELD_NUMBER: _ClassVar[int]
    detector: int
    score: float
    threshold: float
    fired: bool
    spans: _containers.RepeatedCompositeFieldContainer[Span]
    explanation: _containers.RepeatedCompositeFieldContainer[FeatureContribution]
    explained_token: int
    def __init__(self, detector: _Optional[int] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., fired: _Optional[bool] = ..., spans: _Optional[_Iterable[_Union[Span, _Mapping]]] = ..., explanation: _Optional[_Iterable[_Union[FeatureContribution, _Mapping]]] = ..., explained_token: _Optional[int] = ...) -> None: ...

class MonitorResult(_message.Message):
    __slots__ = ("monitor", "version", "fired", "score", "threshold", "spans", "detectors", "severity", "action", "alert_id")
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FIRED_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    DETECTORS_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    monitor: str
    version: int
    fired: bool
    score: float
    threshold: float
    spans: _containers.RepeatedCompositeFieldContainer[Span]
    detectors: _containers.RepeatedCompositeFieldContainer[DetectorResult]
    severity: Severity
    action: Action
    alert_id: str
    def __init__(self, monitor: _Optional[str] = ..., version: _Optional[int] = ..., fired: _Optional[bool] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., spans: _Optional[_Iterable[_Union[Span, _Mapping]]] = ..., detectors: _Optional[_Iterable[_Union[DetectorResult, _Mapping]]] = ..., severity: _Optional[_Union[Severity, str]] = ..., action: _Optional[_Union[Action, str]] = ..., alert_id: _Optional[str] = ...) -> None: ...

class TextResult(_message.Message):
    __slots__ = ("id", "tokens", "monitors")
    ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    MONITORS_FIELD_NUMBER: _ClassVar[int]
    id: str
    tokens: int
    monitors: _containers.RepeatedCompositeFieldContainer[MonitorResult]
    def __init__(self, id: _Optional[str] = ..., tokens: _Optional[int] = ..., monitors: _Optional[_Iterable[_Union[MonitorResult, _Mapping]]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("results", "request_id")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TextResult]
    request_id: str
    def __init__(self, results: _Optional[_Iterable[_Union[TextResult, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class StreamStart(_message.Message):
    __slots__ = ("monitors", "id", "caller")
    MONITORS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    monitors: _containers.RepeatedScalarFieldContainer[str]
    id: str
    caller: str
    def __init__(self, monitors: _Optional[_Iterable[str]] = ..., id: _Optional[str] = ..., caller: _Optional[str] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class StreamScoreRequest(_message.Message):
    __slots__ = ("start", "text", "tokens", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: StreamStart
    text: str
    tokens: TokenChunk
    end: bool
    def __init__(self, start: _Optional[_Union[StreamStart, _Mapping]] = ..., text: _Optional[str] = ..., tokens: _Optional[_Union[TokenChunk, _Mapping]] = ..., end: _Optional[bool] = ...) -> None: ...

class RunningScore(_message.Message):
    __slots__ = ("monitor", "version", "score", "threshold", "fired", "first_token")
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FIRED_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    monitor: str
    version: int
    score: float
    threshold: float
    fired: bool
    first_token: int
    def __init__(self, monitor: _Optional[str] = ..., version: _Optional[int] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., fired: _Optional[bool] = ..., first_token: _Optional[int] = ...) -> None: ...

class StreamScoreResponse(_message.Message):
    __slots__ = ("tokens", "scores", "alerts", "done")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    tokens: int
    scores: _containers.RepeatedCompositeFieldContainer[RunningScore]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    done: bool
    def __init__(self, tokens: _Optional[int] = ..., scores: _Optional[_Iterable[_Union[RunningScore, _Mapping]]] = ..., alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., done: _Optional[bool] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("alert_id", "monitor", "version", "request_id", "caller", "created_at", "severity", "action", "score", "threshold", "spans", "text_sha256", "text", "input_id", "first_token")
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    TEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    INPUT_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    alert_id: str
    monitor: str
    version: int
    request_id: str
    caller: str
    created_at: str
    severity: Severity
    action: Action
    score: float
    threshold: float
    spans: _containers.RepeatedCompositeFieldContainer[Span]
    text_sha256: str
    text: str
    input_id: str
    first_token: int
    def __init__(self, alert_id: _Optional[str] = ..., monitor: _Optional[str] = ..., version: _Optional[int] = ..., request_id: _Optional[str] = ..., caller: _Optional[str] = ..., created_at: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ..., action: _Optional[_Union[Action, str]] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., spans: _Optional[_Iterable[_Union[Span, _Mapping]]] = ..., text_sha256: _Optional[str] = ..., text: _Optional[str] = ..., input_id: _Optional[str] = ..., first_token: _Optional[int] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("monitor", "min_severity", "since", "until", "caller", "limit", "page_token")
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    monitor: str
    min_severity: Severity
    since: str
    until: str
    caller: str
    limit: int
    page_token: str
    def __init__(self, monitor: _Optional[str] = ..., min_severity: _Optional[_Union[Severity, str]] = ..., since: _Optional[str] = ..., until: _Optional[str] = ..., caller: _Optional[str] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("alerts", "next_page_token")
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    next_page_token: str
    def __init__(self, alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SubscribeAlertsRequest(_message.Message):
    __slots__ = ("monitor", "min_severity")
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    monitor: str
    min_severity: Severity
    def __init__(self, monitor: _Optional[str] = ..., min_severity: _Optional[_Union[Severity, str]] = ...) -> None: ...
