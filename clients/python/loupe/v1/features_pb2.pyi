from . import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Dictionary(_message.Message):
    __slots__ = ("dictionary_id", "model_id", "model_checksum", "hook", "hook_out", "layer", "architecture", "d_in", "d_sae", "source_format", "source_checksum", "manifest_json", "created_at", "loaded")
    DICTIONARY_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    HOOK_FIELD_NUMBER: _ClassVar[int]
    HOOK_OUT_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    D_IN_FIELD_NUMBER: _ClassVar[int]
    D_SAE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    dictionary_id: str
    model_id: str
    model_checksum: str
    hook: str
    hook_out: str
    layer: int
    architecture: str
    d_in: int
    d_sae: int
    source_format: str
    source_checksum: str
    manifest_json: str
    created_at: str
    loaded: bool
    def __init__(self, dictionary_id: _Optional[str] = ..., model_id: _Optional[str] = ..., model_checksum: _Optional[str] = ..., hook: _Optional[str] = ..., hook_out: _Optional[str] = ..., layer: _Optional[int] = ..., architecture: _Optional[str] = ..., d_in: _Optional[int] = ..., d_sae: _Optional[int] = ..., source_format: _Optional[str] = ..., source_checksum: _Optional[str] = ..., manifest_json: _Optional[str] = ..., created_at: _Optional[str] = ..., loaded: _Optional[bool] = ...) -> None: ...

class ListDictionariesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDictionariesResponse(_message.Message):
    __slots__ = ("dictionaries", "store_generation")
    DICTIONARIES_FIELD_NUMBER: _ClassVar[int]
    STORE_GENERATION_FIELD_NUMBER: _ClassVar[int]
    dictionaries: _containers.RepeatedCompositeFieldContainer[Dictionary]
    store_generation: int
    def __init__(self, dictionaries: _Optional[_Iterable[_Union[Dictionary, _Mapping]]] = ..., store_generation: _Optional[int] = ...) -> None: ...

class SearchFeaturesRequest(_message.Message):
    __slots__ = ("query", "dictionary_id", "hook", "layer", "min_density", "max_density", "offset", "limit")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    DICTIONARY_ID_FIELD_NUMBER: _ClassVar[int]
    HOOK_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    MIN_DENSITY_FIELD_NUMBER: _ClassVar[int]
    MAX_DENSITY_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    query: str
    dictionary_id: str
    hook: str
    layer: int
    min_density: float
    max_density: float
    offset: int
    limit: int
    def __init__(self, query: _Optional[str] = ..., dictionary_id: _Optional[str] = ..., hook: _Optional[str] = ..., layer: _Optional[int] = ..., min_density: _Optional[float] = ..., max_density: _Optional[float] = ..., offset: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("feature", "score", "label", "max_activation", "density", "snippet", "highlights")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    DENSITY_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    HIGHLIGHTS_FIELD_NUMBER: _ClassVar[int]
    feature: _common_pb2.FeatureRef
    score: float
    label: str
    max_activation: float
    density: float
    snippet: str
    highlights: _containers.RepeatedCompositeFieldContainer[_common_pb2.Range]
    def __init__(self, feature: _Optional[_Union[_common_pb2.FeatureRef, _Mapping]] = ..., score: _Optional[float] = ..., label: _Optional[str] = ..., max_activation: _Optional[float] = ..., density: _Optional[float] = ..., snippet: _Optional[str] = ..., highlights: _Optional[_Iterable[_Union[_common_pb2.Range, _Mapping]]] = ...) -> None: ...

class SearchFeaturesResponse(_message.Message):
    __slots__ = ("total", "hits")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    total: int
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    def __init__(self, total: _Optional[int] = ..., hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ...) -> None: ...

class GetFeatureRequest(_message.Message):
    __slots__ = ("feature", "max_top_examples", "max_interval_examples", "include")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_INTERVAL_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    feature: _common_pb2.FeatureRef
    max_top_examples: int
    max_interval_examples: int
    include: DashboardParts
    def __init__(self, feature: _Optional[_Union[_common_pb2.FeatureRef, _Mapping]] = ..., max_top_examples: _Optional[int] = ..., max_interval_examples: _Optional[int] = ..., include: _Optional[_Union[DashboardParts, _Mapping]] = ...) -> None: ...

class DashboardParts(_message.Message):
    __slots__ = ("top_examples", "interval_examples", "histogram", "logits", "neighbours")
    TOP_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    top_examples: bool
    interval_examples: bool
    histogram: bool
    logits: bool
    neighbours: bool
    def __init__(self, top_examples: _Optional[bool] = ..., interval_examples: _Optional[bool] = ..., histogram: _Optional[bool] = ..., logits: _Optional[bool] = ..., neighbours: _Optional[bool] = ...) -> None: ...

class LogitEffect(_message.Message):
    __slots__ = ("token_id", "token", "value")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    token: str
    value: float
    def __init__(self, token_id: _Optional[int] = ..., token: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class Neighbour(_message.Message):
    __slots__ = ("feature", "cosine")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    COSINE_FIELD_NUMBER: _ClassVar[int]
    feature: _common_pb2.FeatureRef
    cosine: float
    def __init__(self, feature: _Optional[_Union[_common_pb2.FeatureRef, _Mapping]] = ..., cosine: _Optional[float] = ...) -> None: ...

class Histogram(_message.Message):
    __slots__ = ("bin_width", "counts")
    BIN_WIDTH_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    bin_width: float
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, bin_width: _Optional[float] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class Example(_message.Message):
    __slots__ = ("max_activation", "max_position", "token_ids", "tokens", "activations", "document_id", "document_offset", "window")
    MAX_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    MAX_POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    max_activation: float
    max_position: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    activations: _containers.RepeatedScalarFieldContainer[float]
    document_id: int
    document_offset: int
    window: int
    def __init__(self, max_activation: _Optional[float] = ..., max_position: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[str]] = ..., activations: _Optional[_Iterable[float]] = ..., document_id: _Optional[int] = ..., document_offset: _Optional[int] = ..., window: _Optional[int] = ...) -> None: ...

class IntervalExamples(_message.Message):
    __slots__ = ("low", "high", "examples")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    low: float
    high: float
    examples: _containers.RepeatedCompositeFieldContainer[Example]
    def __init__(self, low: _Optional[float] = ..., high: _Optional[float] = ..., examples: _Optional[_Iterable[_Union[Example, _Mapping]]] = ...) -> None: ...

class FeatureDashboard(_message.Message):
    __slots__ = ("feature", "label", "max_activation", "mean_activation", "density", "fire_count", "histogram", "top_logits", "bottom_logits", "neighbours", "decoder_norm", "top_examples", "interval_examples", "hook")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    MEAN_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    DENSITY_FIELD_NUMBER: _ClassVar[int]
    FIRE_COUNT_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGITS_FIELD_NUMBER: _ClassVar[int]
    BOTTOM_LOGITS_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    DECODER_NORM_FIELD_NUMBER: _ClassVar[int]
    TOP_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    HOOK_FIELD_NUMBER: _ClassVar[int]
    feature: _common_pb2.FeatureRef
    label: str
    max_activation: float
    mean_activation: float
    density: float
    fire_count: int
    histogram: Histogram
    top_logits: _containers.RepeatedCompositeFieldContainer[LogitEffect]
    bottom_logits: _containers.RepeatedCompositeFieldContainer[LogitEffect]
    neighbours: _containers.RepeatedCompositeFieldContainer[Neighbour]
    decoder_norm: float
    top_examples: _containers.RepeatedCompositeFieldContainer[Example]
    interval_examples: _containers.RepeatedCompositeFieldContainer[IntervalExamples]
    hook: str
    def __init__(self, feature: _Optional[_Union[_common_pb2.FeatureRef, _Mapping]] = ..., label: _Optional[str] = ..., max_activation: _Optional[float] = ..., mean_activation: _Optional[float] = ..., density: _Optional[float] = ..., fire_count: _Optional[int] = ..., histogram: _Optional[_Union[Histogram, _Mapping]] = ..., top_logits: _Optional[_Iterable[_Union[LogitEffect, _Mapping]]] = ..., bottom_logits: _Optional[_Iterable[_Union[LogitEffect, _Mapping]]] = ..., neighbours: _Optional[_Iterable[_Union[Neighbour, _Mapping]]] = ..., decoder_norm: _Optional[float] = ..., top_examples: _Optional[_Iterable[_Union[Example, _Mapping]]] = ..., interval_examples: _Optional[_Iterable[_Union[IntervalExamples, _Mapping]]] = ..., hook: _Optional[str] = ...) -> None: ...

class GetFeatureResponse(_message.Message):
    __slots__ = ("dashboard",)
    DASHBOARD_FIELD_NUMBER: _ClassVar[int]
    dashboard: FeatureDashboard
    def __init__(self, dashboard: _Optional[_Union[FeatureDashboard, _Mapping]] = ...) -> None: ...

class SimilarFeaturesRequest(_message.Message):
    __slots__ = ("feature", "dictionary_ids", "k")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    DICTIONARY_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    feature: _common_pb2.FeatureRef
    dictionary_ids: _containers.RepeatedScalarFieldContainer[str]
    k: int
    def __init__(self, feature: _Optional[_Union[_common_pb2.FeatureRef, _Mapping]] = ..., dictionary_ids: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ...) -> None: ...

class SimilarFeaturesResponse(_message.Message):
    __slots__ = ("neighbours",)
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    neighbours: _containers.RepeatedCompositeFieldContainer[Neighbour]
    def __init__(self, neighbours: _Optional[_Iterable[_Union[Neighbour, _Mapping]]] = ...) -> None: ...

class TopFeaturesForTextRequest(_message.Message):
    __slots__ = ("text", "token_ids", "dictionary_ids", "k", "k_text", "ignore_bos", "max_density")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    DICTIONARY_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    K_TEXT_FIELD_NUMBER: _ClassVar[int]
    IGNORE_BOS_FIELD_NUMBER: _ClassVar[int]
    MAX_DENSITY_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    dictionary_ids: _containers.RepeatedScalarFieldContainer[str]
    k: int
    k_text: int
    ignore_bos: bool
    max_density: float
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., dictionary_ids: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., k_text: _Optional[int] = ..., ignore_bos: _Optional[bool] = ..., max_density: _Optional[float] = ...) -> None: ...

class TokenFeatures(_message.Message):
    __slots__ = ("position", "token_id", "token", "features")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    position: int
    token_id: int
    token: str
    features: _containers.RepeatedCompositeFieldContainer[_common_pb2.FeatureActivation]
    def __init__(self, position: _Optional[int] = ..., token_id: _Optional[int] = ..., token: _Optional[str] = ..., features: _Optional[_Iterable[_Union[_common_pb2.FeatureActivation, _Mapping]]] = ...) -> None: ...

class TopFeaturesForTextResponse(_message.Message):
    __slots__ = ("tokens", "text_features")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FEATURES_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenFeatures]
    text_features: _containers.RepeatedCompositeFieldContainer[_common_pb2.FeatureActivation]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenFeatures, _Mapping]]] = ..., text_features: _Optional[_Iterable[_Union[_common_pb2.FeatureActivation, _Mapping]]] = ...) -> None: ...

class SetFeatureLabelRequest(_message.Message):
    __slots__ = ("feature", "label", "author")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    feature: _common_pb2.FeatureRef
    label: str
    author: str
    def __init__(self, feature: _Optional[_Union[_common_pb2.FeatureRef, _Mapping]] = ..., label: _Optional[str] = ..., author: _Optional[str] = ...) -> None: ...

class SetFeatureLabelResponse(_message.Message):
    __slots__ = ("store_generation",)
    STORE_GENERATION_FIELD_NUMBER: _ClassVar[int]
    store_generation: int
    def __init__(self, store_generation: _Optional[int] = ...) -> None: ...
