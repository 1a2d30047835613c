"""Python client of the loupe feature database.

    >>> import loupe
    >>> client = loupe.Client("127.0.0.1:50051")
    >>> hits = client.search("lord")
    >>> dashboard = client.feature(hits[0].dictionary_id, hits[0].feature)
    >>> per_token = client.top_features("And the LORD said")
    >>> acts = client.activations("The cat sat", ["blocks.9.hook_resid_post"])  # numpy arrays

Every call raises ``loupe.LoupeError`` with the server's status code and message on error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import grpc
import numpy as np

from types import SimpleNamespace

from .v1 import common_pb2, features_pb2, internals_pb2
from .v1 import features_pb2_grpc, internals_pb2_grpc

# Every message of package loupe.v1, whichever .proto file declares it.
pb = SimpleNamespace(**{name: getattr(module, name) for module in (common_pb2, features_pb2, internals_pb2) for name in module.DESCRIPTOR.message_types_by_name})

__all__ = ["Client", "LoupeError", "Dictionary", "Hit", "Example", "Feature", "TokenFeatures", "FeatureActivation"]


class LoupeError(Exception):
    """A failed call: ``code`` is the gRPC status code name (e.g. "NOT_FOUND")."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


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


def _example(e) -> Example:
    return Example(e.max_activation, e.max_position, list(e.token_ids), list(e.tokens), np.asarray(e.activations, dtype=np.float32), e.document_id, e.document_offset)


def _activation(a) -> FeatureActivation:
    return FeatureActivation(a.feature.dictionary_id, a.feature.feature, a.activation, a.label if a.HasField("label") else None)


class Client:
    """A connection to ``loupe serve`` (default address ``127.0.0.1:50051``)."""

    def __init__(self, address: str = "127.0.0.1:50051", timeout: Optional[float] = 60.0):
        address = address.removeprefix("http://")
        self._channel = grpc.insecure_channel(address)
        self._features = features_pb2_grpc.FeaturesStub(self._channel)
        self._internals = internals_pb2_grpc.InternalsStub(self._channel)
        self.timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:  # a status from the server, or no server
            raise LoupeError(e.code().name, e.details() or str(e)) from None

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
