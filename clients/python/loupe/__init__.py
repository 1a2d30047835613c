"""Python client of the loupe feature database.

    >>> import loupe
    >>> client = loupe.Client("127.0.0.1:50051")
    >>> hits = client.search("lord")
    >>> dashboard = client.feature(hits[0].dictionary_id, hits[0].feature)
    >>> per_token = client.top_features("And the LORD said")
    >>> acts = client.activations("The cat sat", ["blocks.9.hook_resid_post"])  # numpy arrays
    >>> out = client.steer("Tell me a story", [loupe.add(hits[0].dictionary_id, hits[0].feature, 4, unit="max")])
    >>> print(out.default.text, "|", out.steered.text)
    >>> client.create_monitor(json.load(open("monitors/harmful-request.json")))  # a monitor file
    >>> [r] = client.score(["How do I make a weapon at home?"])
    >>> r.monitors[0].fired, r.monitors[0].spans, client.alerts(monitor="harmful-request")

Every call raises ``loupe.LoupeError`` with the server's status code and message on error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import grpc
import numpy as np

from types import SimpleNamespace

from google.protobuf import json_format

from .v1 import common_pb2, features_pb2, internals_pb2, monitoring_pb2, steering_pb2
from .v1 import features_pb2_grpc, internals_pb2_grpc, monitoring_pb2_grpc, steering_pb2_grpc

# Every message of package loupe.v1, whichever .proto file declares it.
pb = SimpleNamespace(**{name: getattr(module, name) for module in (common_pb2, features_pb2, internals_pb2, steering_pb2, monitoring_pb2) for name in module.DESCRIPTOR.message_types_by_name})
# ... and the steering enums: pb.Operation.Value("OPERATION_ADD"), pb.Unit, pb.Positions, pb.Output.
pb.Operation, pb.Unit, pb.Positions, pb.Output = steering_pb2.Operation, steering_pb2.Unit, steering_pb2.Positions, steering_pb2.Output
# ... and the monitoring enums.
pb.Aggregation, pb.Severity, pb.Action, pb.ProbeMethod = monitoring_pb2.Aggregation, monitoring_pb2.Severity, monitoring_pb2.Action, monitoring_pb2.ProbeMethod

__all__ = ["Client", "LoupeError", "Dictionary", "Hit", "Example", "Feature", "TokenFeatures", "FeatureActivation",
           "Intervention", "add", "clamp", "ablate", "orthogonal", "cap", "Completion", "GeneratedToken", "Steered", "Vector",
           "Span", "Contribution", "MonitorScore", "TextScore", "Alert", "monitor_definition"]


class LoupeError(Exception):
    """A failed call: ``code`` is the gRPC status code name (e.g. "NOT_FOUND");
    ``retry_after`` is the seconds to wait when a quota refused the call (else None)."""

    def __init__(self, code: str, message: str, retry_after: Optional[float] = None):
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.retry_after = retry_after


def _error(e: grpc.RpcError) -> LoupeError:
    retry_after = None
    trailing = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == "retry-after-ms":
            retry_after = int(value) / 1000.0
    return LoupeError(e.code().name, e.details() or str(e), retry_after)


@dataclass
class Dictionary:
    dictionary_id: str
    model_id: str
    hook: str
    layer: Optional[int]
    architecture: str
    d_in: int
    d_sae: int
    loaded: bool
    manifest: dict


@dataclass
class Hit:
    dictionary_id: str
    feature: int
    score: float
    label: Optional[str]
    max_activation: float
    density: float
    snippet: str


@dataclass
class Example:
    max_activation: float
    max_position: int
    token_ids: List[int]
    tokens: List[str]
    activations: np.ndarray
    document_id: int
    document_offset: int


@dataclass
class Feature:
    dictionary_id: str
    feature: int
    label: Optional[str]
    hook: str
    max_activation: float
    mean_activation: float
    density: float
    fire_count: int
    histogram_width: float
    histogram: np.ndarray
    top_logits: List[tuple]
    bottom_logits: List[tuple]
    neighbours: List[tuple]
    top_examples: List[Example]
    interval_examples: List[tuple] = field(default_factory=list)


@dataclass
class FeatureActivation:
    dictionary_id: str
    feature: int
    activation: float
    label: Optional[str]


@dataclass
class TokenFeatures:
    position: int
    token_id: int
    token: str
    features: List[FeatureActivation]


_UNITS = {"raw": "UNIT_RAW", "max": "UNIT_MAX_ACTIVATION", "norm": "UNIT_RESIDUAL_NORM"}
_POSITIONS = {"all": "POSITIONS_ALL", "prompt": "POSITIONS_PROMPT", "generated": "POSITIONS_GENERATED"}


@dataclass
class Intervention:
    """One steering edit. Target: ``feature=(dictionary_id, index)``, ``vector_name`` (a stored
    vector) or ``vector=(hook, values)``. ``unit``: "raw", "max" (multiples of the feature's
    max activation in the store) or "norm" (fractions of the hook's mean residual norm).
    ``positions``: "all", "prompt", "generated", or a list of (start, end) ranges."""
    operation: str
    strength: float = 0.0
    feature: Optional[tuple] = None
    vector_name: Optional[str] = None
    vector: Optional[tuple] = None
    unit: str = "raw"
    positions: object = "all"
    cap: Optional[tuple] = None
    include_special_tokens: bool = False

    def to_proto(self):
        iv = pb.Intervention(operation=pb.Operation.Value("OPERATION_" + self.operation.upper()), strength=self.strength,
                             unit=pb.Unit.Value(_UNITS[self.unit]), include_special_tokens=self.include_special_tokens)
        if self.feature is not None:
            iv.feature.CopyFrom(pb.FeatureRef(dictionary_id=self.feature[0], feature=self.feature[1]))
        elif self.vector_name is not None:
            iv.vector_name = self.vector_name
        elif self.vector is not None:
            iv.vector.CopyFrom(pb.HookVector(hook=self.vector[0], values=[float(v) for v in self.vector[1]]))
        if self.cap is not None:
            iv.cap_low, iv.cap_high = self.cap
        if isinstance(self.positions, str):
            iv.positions = pb.Positions.Value(_POSITIONS[self.positions])
        else:
            iv.positions = pb.Positions.Value("POSITIONS_RANGES")
            iv.ranges.extend(pb.Range(start=a, end=b) for a, b in self.positions)
        return iv


def _target(target, kwargs):
    """``add("dict", 12, ...)`` targets a feature; ``add(vector_name="happy")`` a stored vector."""
    if target:
        kwargs["feature"] = tuple(target)
    return kwargs


def add(*feature, strength: float = 1.0, **kwargs) -> Intervention:
    """x += s·d. ``add(dictionary_id, feature, 8, unit="max")`` or ``add(vector_name="v", strength=4)``."""
    if len(feature) == 3:
        *feature, strength = feature
    return Intervention("add", strength, **_target(feature, kwargs))


def clamp(*feature, value: float = 0.0, **kwargs) -> Intervention:
    """The feature's activation set to v, its error term kept."""
    if len(feature) == 3:
        *feature, value = feature
    return Intervention("clamp", value, **_target(feature, kwargs))


def ablate(*feature, **kwargs) -> Intervention:
    return Intervention("ablate", 0.0, **_target(feature, kwargs))


def orthogonal(*feature, strength: float = 0.0, **kwargs) -> Intervention:
    if len(feature) == 3:
        *feature, strength = feature
    return Intervention("orthogonal", strength, **_target(feature, kwargs))


def cap(*feature, low: float = 0.0, high: float = 0.0, **kwargs) -> Intervention:
    return Intervention("cap", 0.0, cap=(low, high), **_target(feature, kwargs))


@dataclass
class GeneratedToken:
    token_id: int
    text: str
    logprob: Optional[float]
    features: List[FeatureActivation]


@dataclass
class Completion:
    text: str
    tokens: List[GeneratedToken]
    stop_reason: str

    @property
    def token_ids(self) -> List[int]:
        return [t.token_id for t in self.tokens]


@dataclass
class Steered:
    prompt_text: str
    prompt_tokens: int
    default: Optional[Completion]
    steered: Optional[Completion]
    interventions: list


@dataclass
class Vector:
    name: str
    hook: str
    width: int
    norm: float
    provenance: dict
    author: str
    created_at: str


@dataclass
class Span:
    token_start: int
    token_end: int
    char_start: int
    char_end: int
    peak_token: int
    peak_value: float
    text: str


@dataclass
class Contribution:
    dictionary_id: str
    feature: int
    activation: float
    contribution: float
    label: Optional[str]


@dataclass
class MonitorScore:
    monitor: str
    version: int
    fired: bool
    score: float
    threshold: float
    spans: List[Span]
    # The features that contributed most at the peak, per detector that fired.
    explanation: List[Contribution]
    severity: str
    action: str
    alert_id: str


@dataclass
class TextScore:
    id: str
    tokens: int
    monitors: List[MonitorScore]

    def monitor(self, name: str) -> MonitorScore:
        return next(m for m in self.monitors if m.monitor == name)


@dataclass
class Alert:
    alert_id: str
    monitor: str
    version: int
    request_id: str
    caller: str
    created_at: str
    severity: str
    action: str
    score: float
    threshold: float
    spans: List[Span]
    text_sha256: str
    text: Optional[str]
    input_id: str
    first_token: int


def _span(s) -> Span:
    return Span(s.token_start, s.token_end, s.char_start, s.char_end, s.peak_token, s.peak_value, s.text)


def _enum_name(enum, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower()


def _monitor_score(m) -> MonitorScore:
    explanation = [Contribution(c.feature.dictionary_id, c.feature.feature, c.activation, c.contribution, c.label if c.HasField("label") else None)
                   for d in m.detectors for c in d.explanation]
    return MonitorScore(m.monitor, m.version, m.fired, m.score, m.threshold, [_span(s) for s in m.spans], explanation,
                        _enum_name(pb.Severity, m.severity, "SEVERITY_"), _enum_name(pb.Action, m.action, "ACTION_"), m.alert_id)


def _alert(a) -> Alert:
    return Alert(a.alert_id, a.monitor, a.version, a.request_id, a.caller, a.created_at, _enum_name(pb.Severity, a.severity, "SEVERITY_"),
                 _enum_name(pb.Action, a.action, "ACTION_"), a.score, a.threshold, [_span(s) for s in a.spans], a.text_sha256,
                 a.text if a.HasField("text") else None, a.input_id, a.first_token)


_AGGREGATIONS = {"Max": "AGGREGATION_MAX", "Mean": "AGGREGATION_MEAN", "Last": "AGGREGATION_LAST"}


def monitor_definition(definition) -> "monitoring_pb2.MonitorDefinition":
    """A ``MonitorDefinition`` from a monitor file's JSON (as ``loupe probe train --monitor``
    writes it and ``monitors/*.json`` hold), a dict of the message's fields, or the message."""
    if isinstance(definition, monitoring_pb2.MonitorDefinition):
        return definition
    if not any("signal" in d and isinstance(d["signal"], dict) and set(d["signal"]) & {"Linear", "Feature", "Features", "Vector"}
               for d in definition.get("detectors", [])):
        return json_format.ParseDict(definition, monitoring_pb2.MonitorDefinition())
    out = monitoring_pb2.MonitorDefinition(name=definition["name"], description=definition.get("description", ""))
    for d in definition["detectors"]:
        det = out.detectors.add()
        kind, body = next(iter(d["signal"].items()))
        if kind == "Linear":
            hook = body["hook"]
            if isinstance(hook, dict):  # {"Block": {"layer": 9, "site": "ResidPost"}}
                block = hook["Block"]
                sites = {"ResidPost": "hook_resid_post", "ResidPre": "hook_resid_pre", "ResidMid": "hook_resid_mid", "AttnOut": "hook_attn_out",
                         "MlpOut": "hook_mlp_out", "MlpPost": "mlp.hook_post", "Ln2Normalized": "ln2.hook_normalized"}
                hook = f"blocks.{block['layer']}.{sites[block['site']]}"
            det.signal.linear.hook, det.signal.linear.bias = hook, body["bias"]
            det.signal.linear.weights.extend(body["weights"])
        elif kind == "Feature":
            det.signal.feature.dictionary_id, det.signal.feature.feature = body["dictionary"], body["feature"]
        elif kind == "Features":
            det.signal.features.dictionary_id, det.signal.features.bias = body["dictionary"], body["bias"]
            for f, w in body["weights"]:
                det.signal.features.weights.add(feature=f, weight=w)
        else:
            det.signal.vector_name = body["name"]
        aggregation = d["aggregation"]
        if isinstance(aggregation, dict):
            det.aggregation, det.window = pb.Aggregation.Value("AGGREGATION_ROLLING_MEAN"), aggregation["RollingMean"]["window"]
        else:
            det.aggregation = pb.Aggregation.Value(_AGGREGATIONS[aggregation])
        det.threshold = d["threshold"]
        det.roles.extend(d.get("scope", {}).get("roles", []))
        det.severity = pb.Severity.Value("SEVERITY_" + d.get("severity", "medium").upper())
        det.action = pb.Action.Value("ACTION_" + d.get("action", "alert").upper())
    return out


def _token(t) -> GeneratedToken:
    return GeneratedToken(t.token_id, t.text, t.logprob if t.HasField("logprob") else None, [_activation(f) for f in t.features])


def _completion(c) -> Completion:
    return Completion(c.text, [_token(t) for t in c.tokens], c.stop_reason)


def _vector(v) -> Vector:
    return Vector(v.name, v.hook, v.width, v.norm, json.loads(v.provenance_json or "{}"), v.author, v.created_at)


def _example(e) -> Example:
    return Example(e.max_activation, e.max_position, list(e.token_ids), list(e.tokens), np.asarray(e.activations, dtype=np.float32), e.document_id, e.document_offset)


def _activation(a) -> FeatureActivation:
    return FeatureActivation(a.feature.dictionary_id, a.feature.feature, a.activation, a.label if a.HasField("label") else None)


class Client:
    """A connection to ``loupe serve`` (default address ``127.0.0.1:50051``).

    ``token`` (default: ``$LOUPE_TOKEN``) is sent as ``authorization: Bearer <token>`` with
    every call. An ``https://`` address, or ``tls_ca``, connects with TLS, checking the
    server's certificate against ``tls_ca`` (a PEM file; default: the system's roots);
    ``client_cert`` and ``client_key`` (PEM files) answer a server that asks for a client
    certificate (mutual TLS). Defaults come from ``$LOUPE_TLS_CA``, ``$LOUPE_CLIENT_CERT``
    and ``$LOUPE_CLIENT_KEY``, as for the CLI.
    """

    def __init__(self, address: str = "127.0.0.1:50051", timeout: Optional[float] = 60.0, token: Optional[str] = None,
                 tls_ca: Optional[str] = None, client_cert: Optional[str] = None, client_key: Optional[str] = None):
        token = token if token is not None else os.environ.get("LOUPE_TOKEN")
        tls_ca = tls_ca or os.environ.get("LOUPE_TLS_CA")
        client_cert = client_cert or os.environ.get("LOUPE_CLIENT_CERT")
        client_key = client_key or os.environ.get("LOUPE_CLIENT_KEY")
        tls = address.startswith("https://") or tls_ca is not None
        address = address.removeprefix("http://").removeprefix("https://")
        if tls:
            def read(path):
                return open(path, "rb").read() if path else None
            if (client_cert is None) != (client_key is None):
                raise ValueError("client_cert and client_key go together (mutual TLS)")
            credentials = grpc.ssl_channel_credentials(root_certificates=read(tls_ca), private_key=read(client_key), certificate_chain=read(client_cert))
            self._channel = grpc.secure_channel(address, credentials)
        else:
            if client_cert is not None:
                raise ValueError("client_cert needs TLS: give an https:// address or tls_ca")
            self._channel = grpc.insecure_channel(address)
        self._metadata = (("authorization", f"Bearer {token.strip()}"),) if token else ()
        self._features = features_pb2_grpc.FeaturesStub(self._channel)
        self._internals = internals_pb2_grpc.InternalsStub(self._channel)
        self._steering = steering_pb2_grpc.SteeringStub(self._channel)
        self._monitoring = monitoring_pb2_grpc.MonitoringStub(self._channel)
        self.timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:  # a status from the server, or no server
            raise _error(e) from None

    def dictionaries(self) -> List[Dictionary]:
        r = self._call(self._features.ListDictionaries, pb.ListDictionariesRequest())
        return [
            Dictionary(d.dictionary_id, d.model_id, d.hook, d.layer if d.HasField("layer") else None, d.architecture, d.d_in, d.d_sae, d.loaded, json.loads(d.manifest_json))
            for d in r.dictionaries
        ]

    def search(self, query: str, dictionary: Optional[str] = None, layer: Optional[int] = None, min_density: Optional[float] = None,
               max_density: Optional[float] = None, limit: int = 20, offset: int = 0) -> List[Hit]:
        """Features whose examples, logit tokens or labels match ``query`` (tantivy syntax)."""
        request = pb.SearchFeaturesRequest(query=query, limit=limit, offset=offset)
        if dictionary is not None:
            request.dictionary_id = dictionary
        if layer is not None:
            request.layer = layer
        if min_density is not None:
            request.min_density = min_density
        if max_density is not None:
            request.max_density = max_density
        r = self._call(self._features.SearchFeatures, request)
        return [Hit(h.feature.dictionary_id, h.feature.feature, h.score, h.label if h.HasField("label") else None, h.max_activation, h.density, h.snippet) for h in r.hits]

    def feature(self, dictionary: str, feature: int, top_examples: int = 0, interval_examples: int = 0) -> Feature:
        """The dashboard of one feature (0 = every stored example)."""
        request = pb.GetFeatureRequest(feature=pb.FeatureRef(dictionary_id=dictionary, feature=feature), max_top_examples=top_examples, max_interval_examples=interval_examples)
        d = self._call(self._features.GetFeature, request).dashboard
        return Feature(
            dictionary_id=d.feature.dictionary_id,
            feature=d.feature.feature,
            label=d.label if d.HasField("label") else None,
            hook=d.hook,
            max_activation=d.max_activation,
            mean_activation=d.mean_activation,
            density=d.density,
            fire_count=d.fire_count,
            histogram_width=d.histogram.bin_width,
            histogram=np.asarray(d.histogram.counts, dtype=np.int64),
            top_logits=[(l.token, l.value) for l in d.top_logits],
            bottom_logits=[(l.token, l.value) for l in d.bottom_logits],
            neighbours=[(n.feature.feature, n.cosine) for n in d.neighbours],
            top_examples=[_example(e) for e in d.top_examples],
            interval_examples=[((i.low, i.high), [_example(e) for e in i.examples]) for i in d.interval_examples],
        )

    def similar(self, dictionary: str, feature: int, k: int = 10, dictionaries: Sequence[str] = ()) -> List[tuple]:
        request = pb.SimilarFeaturesRequest(feature=pb.FeatureRef(dictionary_id=dictionary, feature=feature), dictionary_ids=list(dictionaries), k=k)
        return [(n.feature.dictionary_id, n.feature.feature, n.cosine) for n in self._call(self._features.SimilarFeatures, request).neighbours]

    def top_features(self, text: Optional[str] = None, token_ids: Optional[Sequence[int]] = None, k: int = 5, k_text: int = 20,
                     dictionaries: Sequence[str] = (), ignore_bos: bool = True, max_density: Optional[float] = None):
        """Runs the model on ``text`` (or ``token_ids``): (per-token features, features of the whole text)."""
        request = pb.TopFeaturesForTextRequest(text=text or "", token_ids=list(token_ids or []), k=k, k_text=k_text, dictionary_ids=list(dictionaries), ignore_bos=ignore_bos)
        if max_density is not None:
            request.max_density = max_density
        r = self._call(self._features.TopFeaturesForText, request)
        tokens = [TokenFeatures(t.position, t.token_id, t.token, [_activation(a) for a in t.features]) for t in r.tokens]
        return tokens, [_activation(a) for a in r.text_features]

    def label(self, dictionary: str, feature: int, label: str, author: Optional[str] = None) -> int:
        """Sets a feature's label (empty clears it), searchable when this returns; returns
        the store generation being served (labels do not create one)."""
        request = pb.SetFeatureLabelRequest(feature=pb.FeatureRef(dictionary_id=dictionary, feature=feature), label=label, author=author)
        return self._call(self._features.SetFeatureLabel, request).store_generation

    def tokenize(self, text: str, add_bos: bool = True) -> List[tuple]:
        r = self._call(self._internals.Tokenize, pb.TokenizeRequest(text=text, add_bos=add_bos))
        return list(zip(r.token_ids, r.tokens))

    def activations(self, text: Optional[str], hooks: Sequence[str], token_ids: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
        """Activations at hook points (TransformerLens names) as ``[tokens, width]`` float32 arrays."""
        request = pb.GetActivationsRequest(text=text or "", token_ids=list(token_ids or []), hooks=list(hooks))
        r = self._call(self._internals.GetActivations, request)
        return {t.hook: np.frombuffer(t.data, dtype="<f4").reshape(tuple(t.shape)) for t in r.tensors}

    def _steer_request(self, prompt, interventions, messages, max_new_tokens, temperature, top_p, seed, stop, output, logprobs):
        if (prompt is None) == (messages is None):
            raise ValueError("give prompt (raw text) or messages (chat), not both")
        request = pb.SteerRequest(prompt=prompt or "", interventions=[i.to_proto() for i in interventions], max_new_tokens=max_new_tokens,
                                  temperature=temperature, seed=seed, stop=list(stop), output=pb.Output.Value("OUTPUT_" + output.upper()),
                                  logprobs=logprobs)
        for m in messages or []:
            role, content = (m["role"], m["content"]) if isinstance(m, dict) else m
            request.messages.append(pb.ChatMessage(role=role, content=content))
        if top_p is not None:
            request.top_p = top_p
        return request

    def steer(self, prompt: Optional[str] = None, interventions: Sequence[Intervention] = (), *, messages=None, max_new_tokens: int = 0,
              temperature: float = 0.0, top_p: Optional[float] = None, seed: int = 0, stop: Sequence[str] = (), output: str = "both",
              logprobs: bool = False) -> Steered:
        """Default and steered completions (one batch, same seed). ``prompt`` is raw text;
        ``messages`` ([{"role", "content"}] or (role, content) pairs) use the chat template."""
        request = self._steer_request(prompt, interventions, messages, max_new_tokens, temperature, top_p, seed, stop, output, logprobs)
        r = self._call(self._steering.Steer, request)
        return Steered(r.prompt_text, r.prompt_tokens, _completion(r.default) if r.HasField("default") else None,
                       _completion(r.steered) if r.HasField("steered") else None, list(r.interventions))

    def steer_stream(self, prompt: Optional[str] = None, interventions: Sequence[Intervention] = (), **kwargs):
        """Yields ("started", info), ("token", output, index, GeneratedToken) and ("done", output,
        text, stop_reason) events as the server makes them; output is "default" or "steered"."""
        args = dict(messages=None, max_new_tokens=0, temperature=0.0, top_p=None, seed=0, stop=(), output="both", logprobs=False)
        args.update(kwargs)
        request = self._steer_request(prompt, interventions, **args)
        name = lambda output: pb.Output.Name(output).removeprefix("OUTPUT_").lower()
        try:
            for event in self._steering.SteerStream(request, timeout=self.timeout, metadata=self._metadata):
                kind = event.WhichOneof("event")
                if kind == "started":
                    yield ("started", event.started)
                elif kind == "token":
                    yield ("token", name(event.token.output), event.token.index, _token(event.token.token))
                elif kind == "done":
                    yield ("done", name(event.done.output), event.done.text, event.done.stop_reason)
        except grpc.RpcError as e:
            raise _error(e) from None

    def create_vector(self, name: str, hook: str, positive: Sequence[str] = (), negative: Sequence[str] = (), values=None,
                      replace: bool = False, description: str = "", author: Optional[str] = None) -> Vector:
        """A DiffMean contrast vector (positive minus negative mean activation at ``hook``), or
        ``values`` as given, stored by name."""
        request = pb.CreateVectorRequest(name=name, hook=hook, positive=list(positive), negative=list(negative),
                                         values=[float(v) for v in (values if values is not None else [])], replace=replace,
                                         description=description, author=author)
        return _vector(self._call(self._steering.CreateVector, request).vector)

    def vectors(self) -> List[Vector]:
        return [_vector(v) for v in self._call(self._steering.ListVectors, pb.ListVectorsRequest()).vectors]

    def delete_vector(self, name: str, author: Optional[str] = None) -> None:
        self._call(self._steering.DeleteVector, pb.DeleteVectorRequest(name=name, author=author))

    # Monitoring.

    def create_monitor(self, definition, author: Optional[str] = None, calibrate_fpr: Optional[float] = None,
                       control: Sequence[str] = (), control_set: str = "") -> dict:
        """Stores a monitor (a monitor file's JSON, a dict of ``MonitorDefinition`` fields, or the
        message); with ``calibrate_fpr``, every detector's threshold is calibrated at that
        false-positive rate on the ``control`` texts. Returns the stored ``MonitorInfo`` as a dict."""
        return self._write_monitor(self._monitoring.CreateMonitor, pb.CreateMonitorRequest, definition, author, calibrate_fpr, control, control_set)

    def update_monitor(self, definition, author: Optional[str] = None, calibrate_fpr: Optional[float] = None,
                       control: Sequence[str] = (), control_set: str = "") -> dict:
        """A new version of a live monitor."""
        return self._write_monitor(self._monitoring.UpdateMonitor, pb.UpdateMonitorRequest, definition, author, calibrate_fpr, control, control_set)

    def _write_monitor(self, method, request_type, definition, author, calibrate_fpr, control, control_set):
        definition = monitor_definition(definition)
        if calibrate_fpr is not None:
            for d in definition.detectors:
                d.calibrate.target_fpr, d.calibrate.control_set = calibrate_fpr, control_set
                d.calibrate.control_texts.extend(control)
        return _message_dict(self._call(method, request_type(definition=definition, author=author)))

    def monitor(self, name: str, version: int = 0) -> dict:
        return _message_dict(self._call(self._monitoring.GetMonitor, pb.GetMonitorRequest(name=name, version=version)))

    def monitors(self, include_archived: bool = False) -> List[dict]:
        response = self._call(self._monitoring.ListMonitors, pb.ListMonitorsRequest(include_archived=include_archived))
        return [_message_dict(m) for m in response.monitors]

    def delete_monitor(self, name: str, author: Optional[str] = None) -> dict:
        return _message_dict(self._call(self._monitoring.DeleteMonitor, pb.DeleteMonitorRequest(name=name, author=author)))

    def score(self, inputs: Sequence, monitors: Sequence[str] = (), explain: int = 0, caller: Optional[str] = None) -> List[TextScore]:
        """Scores texts (strings) or conversations (lists of {"role", "content"}) with the named
        monitors (default: every live one)."""
        request = pb.ScoreRequest(monitors=list(monitors), explain_features=explain, caller=caller)
        for item in inputs:
            entry = request.inputs.add()
            if isinstance(item, str):
                entry.text = item
            else:
                for m in item:
                    entry.messages.add(role=m["role"], content=m["content"])
        response = self._call(self._monitoring.Score, request)
        return [TextScore(r.id, r.tokens, [_monitor_score(m) for m in r.monitors]) for r in response.results]

    def stream_score(self, chunks, monitors: Sequence[str] = (), id: str = "", caller: Optional[str] = None):
        """Scores a stream as it is produced: ``chunks`` yields strings (text) or lists of token
        ids. Yields each reply: (tokens scored, {monitor: (score, fired, first_token)}, [Alert])."""
        def requests():
            yield pb.StreamScoreRequest(start=pb.StreamStart(monitors=list(monitors), id=id, caller=caller))
            for chunk in chunks:
                if isinstance(chunk, str):
                    yield pb.StreamScoreRequest(text=chunk)
                else:
                    yield pb.StreamScoreRequest(tokens=pb.TokenChunk(ids=list(chunk)))
            yield pb.StreamScoreRequest(end=True)
        try:
            for reply in self._monitoring.StreamScore(requests(), timeout=self.timeout, metadata=self._metadata):
                scores = {s.monitor: (s.score, s.fired, s.first_token if s.HasField("first_token") else None) for s in reply.scores}
                yield reply.tokens, scores, [_alert(a) for a in reply.alerts]
        except grpc.RpcError as e:
            raise _error(e) from None

    def alerts(self, monitor: str = "", min_severity: str = "", since: str = "", until: str = "", caller: str = "",
               limit: int = 0, page_token: str = "") -> List[Alert]:
        """Alerts, newest first (``since``/``until`` in RFC 3339)."""
        severity = pb.Severity.Value("SEVERITY_" + min_severity.upper()) if min_severity else 0
        request = pb.ListAlertsRequest(monitor=monitor, min_severity=severity, since=since, until=until, caller=caller, limit=limit, page_token=page_token)
        return [_alert(a) for a in self._call(self._monitoring.ListAlerts, request).alerts]

    def subscribe_alerts(self, monitor: str = "", min_severity: str = ""):
        """New alerts as they are raised (a generator; close it to stop)."""
        severity = pb.Severity.Value("SEVERITY_" + min_severity.upper()) if min_severity else 0
        try:
            for alert in self._monitoring.SubscribeAlerts(pb.SubscribeAlertsRequest(monitor=monitor, min_severity=severity), metadata=self._metadata):
                yield _alert(alert)
        except grpc.RpcError as e:
            raise _error(e) from None

    def train_probe(self, hook: str, examples: Sequence[tuple], method: str = "logistic", target_fpr: float = 0.01,
                    monitor_name: str = "", severity: str = "medium", action: str = "alert", author: Optional[str] = None,
                    dictionary_id: str = "", k: int = 0) -> dict:
        """A probe from (text, label) pairs on a held-out split, its threshold at ``target_fpr``;
        stored as monitor ``monitor_name`` when given. ``method``: "logistic" or "diffmean" (on
        the mean-pooled activation at ``hook``), or "sparse" (the ``k`` best features of
        ``dictionary_id``; ``hook`` may be "")."""
        request = pb.TrainProbeRequest(hook=hook, examples=[pb.LabelledText(text=t, label=bool(l)) for t, l in examples],
                                       method=pb.ProbeMethod.Value("PROBE_METHOD_" + method.upper()), target_fpr=target_fpr,
                                       monitor_name=monitor_name, severity=pb.Severity.Value("SEVERITY_" + severity.upper()),
                                       action=pb.Action.Value("ACTION_" + action.upper()), author=author,
                                       dictionary_id=dictionary_id, k=k)
        return _message_dict(self._call(self._monitoring.TrainProbe, request))

    def evaluate_monitor(self, name: str, examples: Sequence[tuple], version: int = 0, bootstrap: int = 0) -> dict:
        """AUROC, average precision, recall at 1% FPR and the threshold's precision/recall/F1/FPR,
        each with a 95% bootstrap interval."""
        request = pb.EvaluateMonitorRequest(monitor=name, version=version, examples=[pb.LabelledText(text=t, label=bool(l)) for t, l in examples], bootstrap=bootstrap)
        return _message_dict(self._call(self._monitoring.EvaluateMonitor, request))


def _message_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
