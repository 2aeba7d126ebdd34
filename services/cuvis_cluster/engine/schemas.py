"""The engine's config models (pydantic v2); they read the published form and, for one release, our old one.

The published ``cuvis_ai_schemas`` models are the source of truth for what crosses the API or the disk:
:mod:`.canonical` writes it, :func:`json_schema` describes it. Inside, node ``class_name``/``hparams``
are held as ``type``/``params``, endpoints as ``node.port`` and the trainer keys under ``trainer``.
The override paths the client documentation uses stay natural: ``training.optimizer.lr``,
``training.max_epochs``, ``data.batch_size``, ``data.train_ids=[0,1,2]``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from cuvis_cluster.errors import InvalidArgument, NotFound

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    # Fields of the published model that we read but do not act on (dropped on input).
    UPSTREAM_ONLY: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _drop_upstream_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.UPSTREAM_ONLY:
            data = {k: v for k, v in data.items() if k not in cls.UPSTREAM_ONLY}
        return data


# ---------------------------------------------------------------------------------------------------------
# pipeline
# ---------------------------------------------------------------------------------------------------------
class PipelineMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = ""
    description: str = ""
    created: str = ""
    tags: list[str] = Field(default_factory=list)
    author: str = ""
    cuvis_ai_version: str = ""

    @field_validator("created", mode="before")
    @classmethod
    def _created_to_str(cls, value: Any) -> Any:
        # YAML turns 2024-01-01 into a date; keep whatever was written, as text.
        if value is None:
            return ""
        if not isinstance(value, str):
            return value.isoformat() if hasattr(value, "isoformat") else str(value)
        return value

    @field_validator("tags", mode="before")
    @classmethod
    def _tags_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        return value


class NodeConfig(_Strict):
    name: str = Field(description="Unique node name; used in connections as <name>.<port>.")
    type: str = Field(description="Registered node type, e.g. RXGlobal (upstream: class_name).")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Constructor parameters (upstream: hparams)."
    )

    @model_validator(mode="before")
    @classmethod
    def _upstream_spelling(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if "class_name" in data and "type" not in data:
                data["type"] = data.pop("class_name")
            if "hparams" in data and "params" not in data:
                data["params"] = data.pop("hparams")
            if data.get("params") is None and "params" in data:
                data["params"] = {}
        return data

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(
                f"node name {value!r} must start with a letter or '_' and contain only letters, digits, "
                "'_' or '-'"
            )
        return value


def _endpoint(value: Any, side: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected '<node>.<port>', got {value!r}")
    parts = value.strip().split(".")
    if len(parts) == 3 and parts[1] in ("outputs", "inputs"):
        expected = "outputs" if side == "source" else "inputs"
        if parts[1] != expected:
            raise ValueError(f"{side} {value!r} must name an {expected[:-1]} ('<node>.{expected}.<port>')")
        parts = [parts[0], parts[2]]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"expected '<node>.<port>' (or '<node>.outputs.<port>'), got {value!r}")
    return f"{parts[0]}.{parts[1]}"


class ConnectionConfig(_Strict):
    source: str = Field(description="<node>.<output port> (also <node>.outputs.<port>)")
    target: str = Field(description="<node>.<input port> (also <node>.inputs.<port>)")

    @field_validator("source", mode="before")
    @classmethod
    def _src(cls, value: Any) -> str:
        return _endpoint(value, "source")

    @field_validator("target", mode="before")
    @classmethod
    def _dst(cls, value: Any) -> str:
        return _endpoint(value, "target")

    @property
    def source_node(self) -> str:
        return self.source.split(".", 1)[0]

    @property
    def source_port(self) -> str:
        return self.source.split(".", 1)[1]

    @property
    def target_node(self) -> str:
        return self.target.split(".", 1)[0]

    @property
    def target_port(self) -> str:
        return self.target.split(".", 1)[1]


class PipelineConfig(_Strict):
    metadata: PipelineMetadata = Field(default_factory=PipelineMetadata)
    plugins: list[str] = Field(
        default_factory=list, description="Plugins the pipeline needs (informational)."
    )
    nodes: list[NodeConfig] = Field(min_length=1)
    connections: list[ConnectionConfig] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _drop_version(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in ("version", "defaults")}
            if data.get("metadata") is None and "metadata" in data:
                data["metadata"] = {}
            if data.get("connections") is None and "connections" in data:
                data["connections"] = []
            if data.get("plugins") is None and "plugins" in data:
                data["plugins"] = []
        return data

    @model_validator(mode="after")
    def _unique_names(self) -> PipelineConfig:
        seen: set[str] = set()
        for node in self.nodes:
            if node.name in seen:
                raise ValueError(f"duplicate node name {node.name!r}")
            seen.add(node.name)
        return self


# ---------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------
def _expand_ids(value: Any) -> Any:
    """Frame ids as a list of ints; "a-b" ranges (upstream selector syntax) expand inclusively."""
    if value is None:
        return None
    if isinstance(value, int | str):
        value = [value]
    out: list[Any] = []
    for item in value:
        if isinstance(item, str) and re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", item):
            lo, hi = (int(p) for p in item.split("-"))
            if hi < lo:
                raise ValueError(f"range {item!r} is empty")
            out.extend(range(lo, hi + 1))
        else:
            out.append(item)
    return out


_SPLIT_STAGES = {"train": "train_ids", "val": "val_ids", "test": "test_ids"}


def splits_to_ids(data: dict[str, Any]) -> dict[str, Any]:
    """The published ``splits`` (``dir_indices`` selectors, the frame ids of our data modules) as our
    ``train_ids``/``val_ids``/``test_ids``; other selector kinds are refused by name."""
    splits = data.pop("splits", None)
    if splits is None:
        return data
    if not isinstance(splits, dict):
        raise ValueError("splits: expected a mapping of stage -> list of selectors")
    for key, value in splits.items():
        if key in ("universe_hash", "constraints", "predict") or (key == "splits_path" and value is None):
            continue  # checks and inference selection our data modules do not use
        if key not in _SPLIT_STAGES:
            raise ValueError(f"splits.{key}: not supported by this worker's data modules")
        ids: list[Any] = []
        any_all = False
        for i, sel in enumerate(value or []):
            kind = sel.get("kind") if isinstance(sel, dict) else None
            if kind == "all":  # the module's default share
                ids, any_all = [], True
                break
            if kind != "dir_indices":
                raise ValueError(
                    f"splits.{key}.{i}: selector kind {kind!r} is not supported; this worker's data modules "
                    "select frames by 'dir_indices' (frame ids)"
                )
            ids.extend(_expand_ids(sel.get("ids") or []))
        if data.get(_SPLIT_STAGES[key]) is None and (ids or not any_all):
            data[_SPLIT_STAGES[key]] = ids  # a stage given with no selectors is an empty split
    return data


class DataConfig(_Strict):
    data_module: str = Field("lentils_synthetic", description="lentils_synthetic | npz | cu3s | indian_pines")
    batch_size: int = Field(2, ge=1)
    num_workers: int = Field(0, ge=0)
    train_ids: list[int] | None = Field(
        None, description="Frame ids of the train split (None: module default)"
    )
    val_ids: list[int] | None = None
    test_ids: list[int] | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="Data-module specific parameters.")

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys_to_params(cls, data: Any) -> Any:
        # Upstream data configs carry module parameters at top level (cu3s_file_path, processing_mode...).
        if isinstance(data, dict):
            known = set(cls.model_fields)
            data = splits_to_ids(dict(data))
            params = dict(data.get("params") or {})
            for key in [k for k in data if k not in known]:
                params.setdefault(key, data.pop(key))
            data["params"] = params
        return data

    @field_validator("train_ids", "val_ids", "test_ids", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return _expand_ids(value)

    @field_validator("train_ids", "val_ids", "test_ids")
    @classmethod
    def _non_negative(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(v < 0 for v in value):
            raise ValueError("frame ids must be >= 0")
        return value


# ---------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("step", "cosine", "exponential", "reduce_on_plateau")
SCHEDULER_ALIASES = {
    "plateau": "reduce_on_plateau",
    "reducelronplateau": "reduce_on_plateau",
    "cosineannealing": "cosine",
}


class OptimizerConfig(_Strict):
    @model_validator(mode="before")
    @classmethod
    def _momentum_none(cls, data: Any) -> Any:
        if isinstance(data, dict) and "momentum" in data and data["momentum"] is None:
            data = {k: v for k, v in data.items() if k != "momentum"}
        return data

    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(default=1e-3, gt=0, le=1, description="Learning rate, in (0, 1].")
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.0, ge=0, description="SGD only.")
    betas: tuple[float, float] | None = Field(default=None, description="Adam/AdamW betas.")
    nesterov: bool = False

    @field_validator("name", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("betas")
    @classmethod
    def _betas(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not all(0 <= b < 1 for b in value):
            raise ValueError("betas must lie in [0, 1)")
        return value


class SchedulerConfig(_Strict):
    UPSTREAM_ONLY = frozenset({"warmup_epochs", "threshold_mode", "eps", "verbose"})

    @model_validator(mode="before")
    @classmethod
    def _nones(cls, data: Any) -> Any:
        # The published model writes unset step_size/gamma/monitor as null.
        if isinstance(data, dict):
            data = {
                k: v for k, v in data.items() if not (v is None and k in ("step_size", "gamma", "monitor"))
            }
        return data

    name: Literal["step", "cosine", "exponential", "reduce_on_plateau"] = "reduce_on_plateau"
    interval: Literal["epoch", "step"] = "epoch"
    frequency: int = Field(default=1, ge=1)
    # step / exponential
    step_size: int = Field(default=10, ge=1, description="step: epochs between decays.")
    gamma: float = Field(default=0.1, gt=0, le=1, description="step/exponential: decay factor.")
    # cosine
    t_max: int | None = Field(default=None, ge=1, description="cosine: period (default: max_epochs).")
    eta_min: float = Field(default=0.0, ge=0)
    # reduce_on_plateau
    monitor: str = Field(default="val_loss", description="reduce_on_plateau: logged value to watch.")
    mode: Literal["min", "max"] = "min"
    patience: int = Field(default=10, ge=0)
    factor: float = Field(default=0.1, gt=0, lt=1)
    threshold: float = Field(default=1e-4, ge=0)
    cooldown: int = Field(default=0, ge=0)
    min_lr: float = Field(default=0.0, ge=0)

    @field_validator("name", mode="before")
    @classmethod
    def _alias(cls, value: Any) -> Any:
        if isinstance(value, str):
            key = value.strip().lower()
            return SCHEDULER_ALIASES.get(key, key)
        return value


class EarlyStoppingConfig(_Strict):
    UPSTREAM_ONLY = frozenset({"verbose", "strict", "check_on_train_epoch_end", "log_rank_zero_only"})
    monitor: str = "val_loss"
    patience: int = Field(default=3, ge=0)
    mode: Literal["min", "max"] = "min"
    min_delta: float = Field(default=0.0, ge=0)
    stopping_threshold: float | None = None
    divergence_threshold: float | None = None
    check_finite: bool = True


class CheckpointConfig(_Strict):
    UPSTREAM_ONLY = frozenset(
        {
            "auto_insert_metric_name",
            "verbose",
            "save_on_exception",
            "save_weights_only",
            "every_n_train_steps",
            "train_time_interval",
            "save_on_train_epoch_end",
            "enable_version_counter",
        }
    )
    monitor: str | None = None
    mode: Literal["min", "max"] = "min"
    save_top_k: int = Field(default=1, ge=-1)
    save_last: bool = False
    every_n_epochs: int | None = Field(default=None, ge=1)
    dirpath: str | None = Field(default=None, description="Relative to the output root.")
    filename: str | None = None


class LearningRateMonitorConfig(_Strict):
    UPSTREAM_ONLY = frozenset({"log_weight_decay"})
    logging_interval: Literal["epoch", "step"] | None = "epoch"
    log_momentum: bool = False


class CallbacksConfig(_Strict):
    early_stopping: list[EarlyStoppingConfig] = Field(default_factory=list)
    checkpoint: CheckpointConfig | None = None
    learning_rate_monitor: LearningRateMonitorConfig | None = None

    @field_validator("early_stopping", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, dict):
            return [value]
        return value


class TrainerConfig(_Strict):
    max_epochs: int = Field(default=5, ge=1)
    max_steps: int = Field(default=-1, ge=-1)
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    precision: str | int = "32-true"
    gradient_clip_val: float | None = Field(default=None, ge=0)
    gradient_clip_algorithm: Literal["norm", "value"] | None = None
    accumulate_grad_batches: int = Field(default=1, ge=1)
    log_every_n_steps: int = Field(default=1, ge=1)
    check_val_every_n_epoch: int | None = Field(default=1, ge=1)
    val_check_interval: float | int | None = None
    limit_train_batches: float | int | None = None
    limit_val_batches: float | int | None = None
    limit_test_batches: float | int | None = None
    num_sanity_val_steps: int | None = Field(default=0, ge=-1)
    deterministic: bool | Literal["warn"] | None = None
    benchmark: bool | None = None
    enable_progress_bar: bool = False
    enable_checkpointing: bool | None = None
    fast_dev_run: bool | int = False

    @field_validator("limit_train_batches", "limit_val_batches", "limit_test_batches")
    @classmethod
    def _limit(cls, value: float | int | None) -> float | int | None:
        if value is not None and value < 0:
            raise ValueError("must be >= 0 (a fraction <= 1.0 or a number of batches)")
        return value


_TRAINER_KEYS = set(TrainerConfig.model_fields)


class TrainingConfig(_Strict):
    UPSTREAM_ONLY = frozenset({"release_cuda_cache_on_validation", "default_root_dir"})
    seed: int = 42
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig | None = None
    callbacks: CallbacksConfig = Field(default_factory=CallbacksConfig)

    @model_validator(mode="before")
    @classmethod
    def _flat_trainer_keys(cls, data: Any) -> Any:
        # Upstream's TrainingConfig is flat (max_epochs next to optimizer) and may carry trainer.callbacks.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        trainer = data.get("trainer")
        trainer = dict(trainer) if isinstance(trainer, dict) else ({} if trainer is None else trainer)
        for key in [k for k in data if k in _TRAINER_KEYS]:
            if isinstance(trainer, dict):  # the flat (canonical) spelling wins over our old nested one
                trainer[key] = data.pop(key)
        if isinstance(trainer, dict) and "callbacks" in trainer:
            nested = trainer.pop("callbacks")
            if nested is not None and data.get("callbacks") is None:
                data["callbacks"] = nested
        data["trainer"] = trainer
        for key in ("callbacks", "optimizer"):
            if key in data and data[key] is None:
                data.pop(key)
        return data


# ---------------------------------------------------------------------------------------------------------
# train run
# ---------------------------------------------------------------------------------------------------------
def _pipeline_kind(value: Any) -> str:
    return "str" if isinstance(value, str) else "PipelineConfig"


PipelineRef = Annotated[
    Annotated[PipelineConfig, Tag("PipelineConfig")] | Annotated[str, Tag("str")],
    Discriminator(_pipeline_kind),
]


class TrainRunConfig(_Strict):
    name: str = ""
    description: str = ""
    pipeline: PipelineRef | None = Field(
        None,
        description="Inline pipeline, or a path relative to the trainrun file (resolved on ResolveConfig).",
    )
    data: DataConfig | None = None
    training: TrainingConfig | None = None
    loss_nodes: list[str] = Field(default_factory=list)
    metric_nodes: list[str] = Field(default_factory=list)
    freeze_nodes: list[str] = Field(default_factory=list)
    unfreeze_nodes: list[str] = Field(default_factory=list)
    output_dir: str = ""
    tags: dict[str, str] = Field(default_factory=dict, description="Metadata tags (old dialect: a list).")

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "defaults"}
            for key in ("loss_nodes", "metric_nodes", "freeze_nodes", "unfreeze_nodes"):
                if key in data and data[key] is None:
                    data[key] = []
            tags = data.get("tags")
            if tags is None and "tags" in data:
                data["tags"] = {}
            elif isinstance(tags, list | tuple):  # our old dialect: a list of labels
                data["tags"] = {str(t): "" for t in tags}
            if data.get("output_dir") is None and "output_dir" in data:
                data["output_dir"] = ""
            if isinstance(data.get("output_dir"), str):
                data["output_dir"] = data["output_dir"].replace("\\", "/")
        return data


# ---------------------------------------------------------------------------------------------------------
# registry of config types
# ---------------------------------------------------------------------------------------------------------
CONFIG_MODELS: dict[str, type[BaseModel]] = {
    "pipeline": PipelineConfig,
    "trainrun": TrainRunConfig,
    "data": DataConfig,
    "training": TrainingConfig,
    "optimizer": OptimizerConfig,
    "scheduler": SchedulerConfig,
    "callbacks": CallbacksConfig,
}
# The config types that live in a Hydra group directory (ResolveConfig).
RESOLVABLE_TYPES = ("pipeline", "trainrun", "data", "training")


def model_for(config_type: str) -> type[BaseModel]:
    key = (config_type or "").strip().lower()
    model = CONFIG_MODELS.get(key)
    if model is None:
        raise NotFound(
            f"unknown config type {config_type!r}; known types: {', '.join(CONFIG_MODELS)}",
            field="config_type",
        )
    return model


def json_schema(config_type: str) -> dict[str, Any]:
    """The published model's JSON Schema (``cuvis_ai_schemas``) for ``config_type``."""
    from cuvis_cluster.engine import canonical  # canonical imports this module

    model_for(config_type)  # NotFound for an unknown type
    return canonical.published_model(config_type).model_json_schema()


def error_lines(exc: ValidationError, prefix: str = "") -> list[str]:
    """``"training.optimizer.lr: Input should be greater than 0"`` per problem."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ()) if not _is_union_tag(p))
        path = ".".join(p for p in (prefix, loc) if p)
        msg = err.get("msg", "invalid")
        lines.append(f"{path}: {msg}" if path else msg)
    return list(dict.fromkeys(lines))


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the union member's class name into the location ("pipeline.PipelineConfig.nodes").
    return isinstance(part, str) and (
        part in {m.__name__ for m in CONFIG_MODELS.values()} or part in ("str",)
    )


def validate(config_type: str, data: Any, prefix: str = "") -> BaseModel:
    """Validate ``data`` as ``config_type``; InvalidArgument naming the field path on failure."""
    model = model_for(config_type)
    if data is None or (isinstance(data, dict) and not data):
        raise InvalidArgument(f"{prefix or config_type}: the config is empty", field=prefix or config_type)
    if not isinstance(data, dict):
        raise InvalidArgument(
            f"{prefix or config_type}: expected a mapping, got {type(data).__name__}",
            field=prefix or config_type,
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = error_lines(exc, prefix)
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first.get("loc", ()) if not _is_union_tag(p))
        raise InvalidArgument(
            "; ".join(lines), field=".".join(p for p in (prefix, loc) if p) or None
        ) from None


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")
