from . import common_pb2 as _common_pb2
from . import monitoring_pb2 as _monitoring_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Operation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATION_UNSPECIFIED: _ClassVar[Operation]
    OPERATION_ADD: _ClassVar[Operation]
    OPERATION_CLAMP: _ClassVar[Operation]
    OPERATION_ABLATE: _ClassVar[Operation]
    OPERATION_ORTHOGONAL: _ClassVar[Operation]
    OPERATION_CAP: _ClassVar[Operation]

class Unit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNIT_RAW: _ClassVar[Unit]
    UNIT_MAX_ACTIVATION: _ClassVar[Unit]
    UNIT_RESIDUAL_NORM: _ClassVar[Unit]

class Positions(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POSITIONS_ALL: _ClassVar[Positions]
    POSITIONS_PROMPT: _ClassVar[Positions]
    POSITIONS_GENERATED: _ClassVar[Positions]
    POSITIONS_RANGES: _ClassVar[Positions]

class Output(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_BOTH: _ClassVar[Output]
    OUTPUT_STEERED: _ClassVar[Output]
    OUTPUT_DEFAULT: _ClassVar[Output]
OPERATION_UNSPECIFIED: Operation
OPERATION_ADD: Operation
OPERATION_CLAMP: Operation
OPERATION_ABLATE: Operation
OPERATION_ORTHOGONAL: Operation
OPERATION_CAP: Operation
UNIT_RAW: Unit
UNIT_MAX_ACTIVATION: Unit
UNIT_RESIDUAL_NORM: Unit
POSITIONS_ALL: Positions
POSITIONS_PROMPT: Positions
POSITIONS_GENERATED: Positions
POSITIONS_RANGES: Positions
OUTPUT_BOTH: Output
OUTPUT_STEERED: Output
OUTPUT_DEFAULT: Output

class HookVector(_message.Message):
    __slots__ = ("hook", "values")
    HOOK_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    hook: str
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, hook: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class Intervention(_message.Message):
    __slots__ = ("feature", "vector", "vector_name", "operation", "strength", "cap_low", "cap_high", "unit", "positions", "ranges", "include_special_tokens")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    VECTOR_NAME_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    CAP_LOW_FIELD_NUMBER: _ClassVar[int]
    CAP_HIGH_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    feature: _common_pb2.FeatureRef
    vector: HookVector
    vector_name: str
    operation: Operation
    strength: float
    cap_low: float
    cap_high: float
    unit: Unit
    positions: Positions
    ranges: _containers.RepeatedCompositeFieldContainer[_common_pb2.Range]
    include_special_tokens: bool
    def __init__(self, feature: _Optional[_Union[_common_pb2.FeatureRef, _Mapping]] = ..., vector: _Optional[_Union[HookVector, _Mapping]] = ..., vector_name: _Optional[str] = ..., operation: _Optional[_Union[Operation, str]] = ..., strength: _Optional[float] = ..., cap_low: _Optional[float] = ..., cap_high: _Optional[float] = ..., unit: _Optional[_Union[Unit, str]] = ..., positions: _Optional[_Union[Positions, str]] = ..., ranges: _Optional[_Iterable[_Union[_common_pb2.Range, _Mapping]]] = ..., include_special_tokens: _Optional[bool] = ...) -> None: ...

class SteerRequest(_message.Message):
    __slots__ = ("prompt", "messages", "interventions", "max_new_tokens", "temperature", "top_p", "seed", "stop", "output", "logprobs", "monitors")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    MONITORS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    interventions: _containers.RepeatedCompositeFieldContainer[Intervention]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    output: Output
    logprobs: bool
    monitors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., interventions: _Optional[_Iterable[_Union[Intervention, _Mapping]]] = ..., max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., output: _Optional[_Union[Output, str]] = ..., logprobs: _Optional[bool] = ..., monitors: _Optional[_Iterable[str]] = ...) -> None: ...

class AppliedIntervention(_message.Message):
    __slots__ = ("hook", "operation", "strength", "cap_low", "cap_high", "prompt_positions", "edits_generated", "target")
    HOOK_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    CAP_LOW_FIELD_NUMBER: _ClassVar[int]
    CAP_HIGH_FIELD_NUMBER: _ClassVar[int]
    PROMPT_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    EDITS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    hook: str
    operation: Operation
    strength: float
    cap_low: float
    cap_high: float
    prompt_positions: _containers.RepeatedScalarFieldContainer[int]
    edits_generated: bool
    target: str
    def __init__(self, hook: _Optional[str] = ..., operation: _Optional[_Union[Operation, str]] = ..., strength: _Optional[float] = ..., cap_low: _Optional[float] = ..., cap_high: _Optional[float] = ..., prompt_positions: _Optional[_Iterable[int]] = ..., edits_generated: _Optional[bool] = ..., target: _Optional[str] = ...) -> None: ...

class GeneratedToken(_message.Message):
    __slots__ = ("token_id", "text", "logprob", "features")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    text: str
    logprob: float
    features: _containers.RepeatedCompositeFieldContainer[_common_pb2.FeatureActivation]
    def __init__(self, token_id: _Optional[int] = ..., text: _Optional[str] = ..., logprob: _Optional[float] = ..., features: _Optional[_Iterable[_Union[_common_pb2.FeatureActivation, _Mapping]]] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("text", "tokens", "stop_reason", "alerts")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    text: str
    tokens: _containers.RepeatedCompositeFieldContainer[GeneratedToken]
    stop_reason: str
    alerts: _containers.RepeatedCompositeFieldContainer[_monitoring_pb2.Alert]
    def __init__(self, text: _Optional[str] = ..., tokens: _Optional[_Iterable[_Union[GeneratedToken, _Mapping]]] = ..., stop_reason: _Optional[str] = ..., alerts: _Optional[_Iterable[_Union[_monitoring_pb2.Alert, _Mapping]]] = ...) -> None: ...

class SteerResponse(_message.Message):
    __slots__ = ("prompt_text", "prompt_tokens", "default", "steered", "interventions")
    PROMPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    STEERED_FIELD_NUMBER: _ClassVar[int]
    INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    prompt_text: str
    prompt_tokens: int
    default: Completion
    steered: Completion
    interventions: _containers.RepeatedCompositeFieldContainer[AppliedIntervention]
    def __init__(self, prompt_text: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., default: _Optional[_Union[Completion, _Mapping]] = ..., steered: _Optional[_Union[Completion, _Mapping]] = ..., interventions: _Optional[_Iterable[_Union[AppliedIntervention, _Mapping]]] = ...) -> None: ...

class SteerStarted(_message.Message):
    __slots__ = ("prompt_text", "prompt_tokens", "interventions")
    PROMPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    prompt_text: str
    prompt_tokens: int
    interventions: _containers.RepeatedCompositeFieldContainer[AppliedIntervention]
    def __init__(self, prompt_text: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., interventions: _Optional[_Iterable[_Union[AppliedIntervention, _Mapping]]] = ...) -> None: ...

class SteerToken(_message.Message):
    __slots__ = ("output", "index", "token")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    output: Output
    index: int
    token: GeneratedToken
    def __init__(self, output: _Optional[_Union[Output, str]] = ..., index: _Optional[int] = ..., token: _Optional[_Union[GeneratedToken, _Mapping]] = ...) -> None: ...

class SteerDone(_message.Message):
    __slots__ = ("output", "text", "stop_reason", "alerts")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    output: Output
    text: str
    stop_reason: str
    alerts: _containers.RepeatedCompositeFieldContainer[_monitoring_pb2.Alert]
    def __init__(self, output: _Optional[_Union[Output, str]] = ..., text: _Optional[str] = ..., stop_reason: _Optional[str] = ..., alerts: _Optional[_Iterable[_Union[_monitoring_pb2.Alert, _Mapping]]] = ...) -> None: ...

class SteerEvent(_message.Message):
    __slots__ = ("started", "token", "done")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    started: SteerStarted
    token: SteerToken
    done: SteerDone
    def __init__(self, started: _Optional[_Union[SteerStarted, _Mapping]] = ..., token: _Optional[_Union[SteerToken, _Mapping]] = ..., done: _Optional[_Union[SteerDone, _Mapping]] = ...) -> None: ...

class CreateVectorRequest(_message.Message):
    __slots__ = ("name", "hook", "positive", "negative", "values", "replace", "description", "author")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOOK_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    hook: str
    positive: _containers.RepeatedScalarFieldContainer[str]
    negative: _containers.RepeatedScalarFieldContainer[str]
    values: _containers.RepeatedScalarFieldContainer[float]
    replace: bool
    description: str
    author: str
    def __init__(self, name: _Optional[str] = ..., hook: _Optional[str] = ..., positive: _Optional[_Iterable[str]] = ..., negative: _Optional[_Iterable[str]] = ..., values: _Optional[_Iterable[float]] = ..., replace: _Optional[bool] = ..., description: _Optional[str] = ..., author: _Optional[str] = ...) -> None: ...

class VectorInfo(_message.Message):
    __slots__ = ("name", "hook", "width", "norm", "provenance_json", "author", "created_at", "model_checksum")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOOK_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    NORM_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_JSON_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    name: str
    hook: str
    width: int
    norm: float
    provenance_json: str
    author: str
    created_at: str
    model_checksum: str
    def __init__(self, name: _Optional[str] = ..., hook: _Optional[str] = ..., width: _Optional[int] = ..., norm: _Optional[float] = ..., provenance_json: _Optional[str] = ..., author: _Optional[str] = ..., created_at: _Optional[str] = ..., model_checksum: _Optional[str] = ...) -> None: ...

class CreateVectorResponse(_message.Message):
    __slots__ = ("vector",)
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    vector: VectorInfo
    def __init__(self, vector: _Optional[_Union[VectorInfo, _Mapping]] = ...) -> None: ...

class ListVectorsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListVectorsResponse(_message.Message):
    __slots__ = ("vectors",)
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    vectors: _containers.RepeatedCompositeFieldContainer[VectorInfo]
    def __init__(self, vectors: _Optional[_Iterable[_Union[VectorInfo, _Mapping]]] = ...) -> None: ...

class DeleteVectorRequest(_message.Message):
    __slots__ = ("name", "author")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    author: str
    def __init__(self, name: _Optional[str] = ..., author: _Optional[str] = ...) -> None: ...

class DeleteVectorResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
