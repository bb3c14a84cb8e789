"""The typed contract of each artifact one pipeline step hands to the next.

A KFP artifact carries a flat JSON metadata dict; every step used to write and read its keys as strings,
so a renamed key broke a later step at run time. Here each artifact is a frozen dataclass: the producing
step builds one and writes `to_metadata()`, a consuming step reads `from_metadata(artifact.metadata)`,
which names the artifact and the missing key when a producer of another version wrote it. The metadata
keys are the field names (what the Kubeflow UI shows). KFP stores metadata as a protobuf Struct, where
every number is a float: `from_metadata` converts each value back to its field's type.

`contract_version` is stored with every artifact (key `contract_version`; `version` is already the data
set version): a reader refuses an artifact of a newer contract than it knows, and reads one written
before the key existed as version 1.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar, Union

from sam2.promotion.comparison import ComparedModel

CONTRACT_VERSION_KEY = "contract_version"
_C = TypeVar("_C", bound="StepContract")


class ContractError(ValueError):
    """An artifact's metadata does not hold what its contract promises; the message names the artifact."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepContract:
    """Base of every artifact contract: flat metadata with one key per field, plus the contract version."""

    ARTIFACT: ClassVar[str] = "artifact"
    CURRENT_VERSION: ClassVar[int] = 1

    contract_version: int = 1

    def to_metadata(self) -> dict[str, Any]:
        """The artifact metadata: field name -> JSON value."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_metadata(cls: type[_C], metadata: Mapping[str, Any]) -> _C:
        """Read an artifact's metadata. Keys the contract does not know are ignored (written by a newer
        producer that added a field); raises ContractError for a missing key, a value of the wrong type
        or a newer contract version."""
        version = int(metadata.get(CONTRACT_VERSION_KEY, 1))
        if version > cls.CURRENT_VERSION:
            raise ContractError(
                f"the {cls.ARTIFACT} artifact has contract version {version}, this code reads up to "
                f"{cls.CURRENT_VERSION}: run the pipeline's steps from one image"
            )
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == CONTRACT_VERSION_KEY:
                continue
            if f.name not in metadata:
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                    continue
                raise ContractError(
                    f"the {cls.ARTIFACT} artifact's metadata has no {f.name!r} (keys: {sorted(metadata)}); "
                    "it was written by another version of the pipeline"
                )
            try:
                values[f.name] = _convert(metadata[f.name], hints[f.name])
            except (TypeError, ValueError) as exc:
                raise ContractError(
                    f"the {cls.ARTIFACT} artifact's {f.name!r} is {metadata[f.name]!r}: {exc}"
                ) from None
        return cls(**values)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PublishedDataset(StepContract):
    """extract_frames -> (the UI): the data set version published at `uri` (s3://.../datasets/<name>/<version>)."""

    ARTIFACT: ClassVar[str] = "frames (extract_frames)"

    uri: str
    dataset_name: str
    version: str
    num_videos: int
    num_frames: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class ValidatedDataset(StepContract):
    """validate_dataset -> split_dataset: the data set and its validation report and list of good videos."""

    ARTIFACT: ClassVar[str] = "validated (validate_dataset)"

    uri: str
    dataset_name: str
    version: str
    num_videos: int
    validation_uri: str
    valid_list_uri: str
    num_good: int
    num_bad: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSplits(ValidatedDataset):
    """split_dataset -> train, infer, evaluate, merge: the validated data set plus its train/val lists.

    `train_bytes`: what staging the train videos puts on disk; the training job sizes its scratch with it.
    """

    ARTIFACT: ClassVar[str] = "splits (split_dataset)"

    splits_uri: str
    train_list_uri: str
    val_list_uri: str
    num_train: int
    num_val: int
    train_bytes: int | None = None

    @classmethod
    def of(cls, validated: ValidatedDataset, **lists: Any) -> DataSplits:
        """The splits of `validated`: its fields plus `lists` (splits_uri, train_list_uri, ...)."""
        base = {
            f.name: getattr(validated, f.name)
            for f in dataclasses.fields(ValidatedDataset)
            if f.name != CONTRACT_VERSION_KEY
        }
        return cls(**base, **lists)


RANDOM_INIT_NOTE = "RANDOM WEIGHTS (no init_checkpoint_uri given; built by build_sam2, not SAM 2.1 weights)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainedModel(StepContract):
    """train_model -> infer, evaluate, promote: the trained checkpoint `uri` and what produced it.

    `random_init`: trained from a random-weight checkpoint (no init checkpoint was given); such a model
    is a smoke test and never becomes champion unless the run allows it. `launcher`: what the launcher
    reported (job name, ...), stored as `launcher_<key>` metadata keys.
    """

    ARTIFACT: ClassVar[str] = "model (train_model)"

    uri: str
    run_uri: str
    model_config: str
    training_config: str = ""
    training_overrides: str = ""
    init_checkpoint: str = ""
    random_init: bool = False
    dataset_uri: str = ""
    dataset_version: str = ""
    tensorboard_uri: str = ""
    train_seconds: float | None = None
    launcher: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def init_note(self) -> str:
        """How the training started, for people: 'given' or a warning about random weights."""
        return RANDOM_INIT_NOTE if self.random_init else "given"

    @property
    def model_size(self) -> str:
        """The size suffix of the model config ('t' for configs/sam2.1/sam2.1_hiera_t.yaml)."""
        return self.model_config.rsplit("/", 1)[-1].removesuffix(".yaml").rsplit("_", 1)[-1]

    def to_metadata(self) -> dict[str, Any]:
        meta = super().to_metadata()
        meta.pop("launcher")
        meta.update({f"launcher_{k}": _jsonable(v) for k, v in self.launcher.items()})
        return meta

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> TrainedModel:
        launcher = {k.removeprefix("launcher_"): v for k, v in metadata.items() if k.startswith("launcher_")}
        meta = {k: v for k, v in metadata.items() if not k.startswith("launcher_")}
        if "random_init" not in meta and "init" in meta:  # written before random_init was a flag
            meta["random_init"] = meta["init"] != "given"
        model = super().from_metadata(meta)
        return dataclasses.replace(model, launcher=launcher)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReferenceModels(StepContract):
    """resolve_reference_models -> infer: the champion and baseline to score beside the new model, and
    why the others cannot be scored (CHAMPION / BASELINE -> a sentence)."""

    ARTIFACT: ClassVar[str] = "references (resolve_reference_models)"

    models: list[ComparedModel] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_metadata(self) -> dict[str, Any]:
        return {**super().to_metadata(), "models": [m.to_dict() for m in self.models]}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> ReferenceModels:
        models = [ComparedModel.from_dict(m) for m in metadata.get("models", [])]
        refs = super().from_metadata({k: v for k, v in metadata.items() if k != "models"})
        return dataclasses.replace(refs, models=models)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardPredictions(StepContract):
    """infer_videos (one shard) -> merge_predictions: where the shard wrote its masks and its report."""

    ARTIFACT: ClassVar[str] = "predictions (infer_videos)"

    uri: str
    checkpoint: str
    report_uri: str
    shard_index: int
    num_shards: int
    num_videos: int
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Predictions(StepContract):
    """merge_predictions -> evaluate: each scored model's published predictions.

    `models`: one entry per model, a ComparedModel dict plus `uri`, its predictions folder.
    """

    ARTIFACT: ClassVar[str] = "predictions (merge_predictions)"

    uri: str
    checkpoint: str
    models: list[dict[str, Any]]
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    num_shards: int
    num_videos: int

    def entries(self) -> dict[str, dict[str, Any]]:
        """Model key (new, champion, baseline) -> its entry."""
        return {m["key"]: dict(m) for m in self.models}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ComparisonSummary(StepContract):
    """evaluate_predictions -> promote: the comparison's metadata (the scores are the artifact's JSON
    file, sam2.promotion.comparison.comparison_summary)."""

    ARTIFACT: ClassVar[str] = "comparison (evaluate_predictions)"

    dataset_version: str
    val_list_uri: str
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PromotionDecision(StepContract):
    """promote_model -> (the UI): the registered version and the decision on it."""

    ARTIFACT: ClassVar[str] = "decision_report (promote_model)"

    model_name: str
    version: str
    decision: str
    rule: str
    mlflow_run_id: str


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _convert(value: Any, hint: Any) -> Any:
    """`value` as type `hint` (int, float, bool, str, their Optional, dict or list of JSON values)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _convert(value, args[0])
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise TypeError("expected an object")
        return dict(value)
    if origin is list or hint is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError("expected a list")
        return list(value)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, (bool, int, float)):
            raise TypeError("expected true or false")
        return bool(value)
    if hint is int:
        if isinstance(value, bool) or float(value) != int(float(value)):
            raise ValueError("expected a whole number")
        return int(float(value))
    if hint is float:
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError("expected text")
        return value
    return value
