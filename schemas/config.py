"""Typed experiment configs, loaded from YAML with `key=value` overrides.

One YAML file under `configs/` describes one experiment: the dataset, the teacher backbone, the
OOD generators, how precompute runs, how students train and how they are evaluated. `load_config`
builds the dataclasses below and reports every problem at once in a `ConfigError`.

    cfg = load_config("configs/fashion-mnist.yaml", ["train.epochs=1", "dataset.root=/data"])
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from schemas.errors import ConfigError
from schemas.manifest import SHARD_SET_ID_PATTERN

__all__ = [
    "BackboneConfig",
    "DatasetConfig",
    "EvaluateConfig",
    "ExperimentConfig",
    "GeneratorConfig",
    "OODConfig",
    "OODTestConfig",
    "PrecomputeConfig",
    "RunnerConfig",
    "StorageConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "cpu_shortfall",
    "load_config",
]


@dataclass
class DatasetConfig:
    """The data set to read and the subset of it to use."""

    name: str
    """Reader name, for example `fashion-mnist`."""
    root: str
    """Folder that contains the data set in its official on-disk layout."""
    image_size: int = 64
    """Side of the square RGB image every sample is resized to before OOD views and the teacher."""
    id_train_split: str = "train"
    """Reader split used as in-distribution training data."""
    id_test_split: str = "test"
    """Reader split used as in-distribution test data."""
    id_val_split: str | None = None
    """Reader split used as in-distribution validation data (model selection); null for none."""
    ood_val_splits: list[str] = field(default_factory=list)
    """Reader splits with a natural shift used for validation, such as WILDS `val`."""
    ood_test_splits: list[str] = field(default_factory=list)
    """Reader splits with a natural shift used as OOD test data, such as WILDS `test`."""
    max_train_samples: int | None = None
    """Random subset size of the training split; null keeps every sample."""
    max_test_samples: int | None = None
    """Random subset size of the test split; null keeps every sample."""
    subset_seed: int = 0
    """Seed of the permutation that picks the subsets."""
    val_samples: int = 0
    """ID training samples held out as the `id_val` split when the data set has no ID
    validation split of its own (`id_val_split: null`). They never enter training."""
    options: dict[str, Any] = field(default_factory=dict)
    """Reader-specific options, passed to the reader unchanged."""


@dataclass
class BackboneConfig:
    """A backbone, its layer taps and its teacher head. Pipeline and trainer build it alike."""

    arch: Literal["efficientnet_lite0", "hf_vit", "hf_clip_vision", "timm"]
    """Backbone family."""
    weights: str | None = None
    """Local weights file or model folder. Null takes the weights bundled with the package
    (EfficientNet-Lite0 only)."""
    pretrained: bool = True
    """False builds randomly initialised weights from `model_options` (tests, tiny models)."""
    model_options: dict[str, Any] = field(default_factory=dict)
    """Architecture options, for example a timm model name or Hugging Face config fields."""
    taps: list[str] = field(default_factory=list)
    """Named modules whose outputs are pooled and stored as activation targets."""
    head: Literal["linear_probe", "zero_shot", "own"] = "linear_probe"
    """Teacher head: a linear probe fitted on frozen ID features, CLIP zero-shot prompts, or the
    backbone's own task head."""
    prompt_template: str = "a photo of a {}."
    """Zero-shot prompt; `{}` is replaced by each class name."""
    seed: int = 0
    """Seed for randomly initialised weights."""


@dataclass
class GeneratorConfig:
    """One OOD generator with its share of the training views."""

    name: str
    """Generator name, for example `corruption`."""
    weight: float = 1.0
    """Relative probability that a training view comes from this generator."""
    params: dict[str, Any] = field(default_factory=dict)
    """Generator-specific parameters, validated by the generator."""


@dataclass
class OODTestConfig:
    """The synthetic OOD test grid: every listed corruption at every listed severity."""

    corruptions: list[str] = field(default_factory=list)
    """Corruption names. Families not used by the training generators count as held out."""
    severities: list[int] = field(default_factory=lambda: [1, 3, 5])
    """Severities from 1 to 5."""
    images_per_set: int | None = None
    """Test images per (corruption, severity) set; null uses the whole ID test subset."""


@dataclass
class OODConfig:
    """Generation settings of the OOD training views and the OOD test sets."""

    views_per_image: int = 0
    """OOD training views generated from each ID training image; needs `train` generators."""
    seed: int = 0
    """Global seed mixed into every view's seed."""
    train: list[GeneratorConfig] = field(default_factory=list)
    """Generators of the OOD training views."""
    test: OODTestConfig = field(default_factory=OODTestConfig)
    """The synthetic OOD test sets."""


@dataclass
class StorageConfig:
    """Storage format of the teacher targets. Every option is recorded in the manifest's layout
    and is part of the shard-set id. `docs/storage.md` lists the bytes and the error of each
    option."""

    logits: Literal["float32", "float16", "topk"] = "float32"
    """Stored logits: every class in float32 or float16, or only the `top_k` largest in float32
    with one logit for the remaining classes that keeps their total probability mass."""
    top_k: int = 10
    """Classes kept when `logits` is `topk`; must be below the number of classes."""
    activations: Literal["mean", "cls", "full"] = "mean"
    """Part of each tapped output that is kept: the mean over tokens or spatial positions (what
    the trainer's layer taps compute), the class token (token outputs only), or the whole
    output, (tokens, channels) or (channels, height, width)."""
    projection_dim: int | None = None
    """Project the channel axis of each stored activation to this many dimensions with a fixed
    Gaussian random matrix; null stores the channels unprojected."""
    projection_seed: int = 0
    """Seed of the random projection matrices."""
    activation_dtype: Literal["float32", "float16", "bfloat16", "int8"] = "float16"
    """Stored activation values. `int8` keeps one float32 scale per row: per token, per channel
    of a feature map, or one for a pooled vector."""

    def validate(self) -> list[str]:
        """Return the out-of-range values, each with its allowed range."""
        problems = []
        if self.top_k < 1:
            problems.append(f"precompute.storage.top_k: {self.top_k} must be >= 1")
        if self.projection_dim is not None and self.projection_dim < 1:
            problems.append(
                f"precompute.storage.projection_dim: {self.projection_dim} must be >= 1, "
                "or null for no projection"
            )
        return problems


@dataclass
class PrecomputeConfig:
    """Settings of the Ray precompute job and of what it stores."""

    output: str = "shards/{name}"
    """Shard set folder; `{name}` is replaced by the experiment name."""
    shard_size: int = 1000
    """Samples per shard."""
    batch_size: int = 64
    """Teacher batch size."""
    num_teacher_actors: int = 1
    """Teacher actors in the Ray actor pool."""
    torch_threads: int = 2
    """torch intra-op threads per teacher actor."""
    num_cpus: int | None = None
    """CPUs given to the local Ray cluster; null lets Ray detect them."""
    teacher_num_cpus: float = 1.0
    """CPUs that Ray reserves per teacher actor. The actors and one view task must fit in the
    cluster's CPUs, or the job cannot schedule its view tasks and is rejected before it starts."""
    view_num_cpus: float = 0.5
    """CPUs reserved per OOD view task. Any value other than `teacher_num_cpus` keeps Ray Data
    from fusing view generation into the actor, so views are generated by parallel tasks while
    the teacher runs."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Precision and form of the stored logits and activations."""
    probe_max_iter: int = 1000
    """L-BFGS iterations when fitting the linear-probe head."""
    probe_c: float = 1.0
    """Inverse L2 strength of the linear probe (scikit-learn's `C`)."""

    def validate_resources(self) -> list[str]:
        """Return the problems of the actor and view-task CPU settings."""
        problems = []
        if self.num_teacher_actors < 1:
            problems.append(
                f"precompute.num_teacher_actors: {self.num_teacher_actors} must be >= 1"
            )
        for name in ("teacher_num_cpus", "view_num_cpus"):
            if getattr(self, name) <= 0:
                problems.append(f"precompute.{name}: {getattr(self, name)} must be > 0")
        if self.teacher_num_cpus == self.view_num_cpus:
            problems.append(
                f"precompute.view_num_cpus: {self.view_num_cpus} equals teacher_num_cpus, so "
                "Ray Data would fuse view generation into the teacher actor and run both on one "
                "CPU share; give them different values"
            )
        needed = self.num_teacher_actors * self.teacher_num_cpus + self.view_num_cpus
        if self.num_cpus is not None and needed > self.num_cpus:
            problems.append(cpu_shortfall(self, self.num_cpus))
        return problems


def cpu_shortfall(pre: PrecomputeConfig, cluster_cpus: float) -> str:
    """Describe why the actors and a view task do not fit in `cluster_cpus`, and the fixes."""
    needed = pre.num_teacher_actors * pre.teacher_num_cpus + pre.view_num_cpus
    return (
        f"precompute.num_teacher_actors: {pre.num_teacher_actors} actors x teacher_num_cpus "
        f"{pre.teacher_num_cpus:g} + view_num_cpus {pre.view_num_cpus:g} = {needed:g} CPUs, but "
        f"the Ray cluster has {cluster_cpus:g}, so no view task could run and the job would hang; "
        "use fewer actors, lower teacher_num_cpus, or give Ray more CPUs (precompute.num_cpus)"
    )


@dataclass
class TrainConfig:
    """One student training run. Methods in `ExperimentConfig.methods` override these fields."""

    finetune: Literal["full", "lora", "linear_probe"] = "lora"
    """Full fine-tuning, LoRA adapters (peft), or the head alone on a frozen backbone."""
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | None = None
    """Module name patterns for LoRA; null uses the backbone's default targets."""
    head_init: Literal["probe", "zero", "random"] = "probe"
    """Initial student head: the teacher's head (with `finetune: full` this is LP-FT), zeros,
    or PyTorch's default random initialisation."""
    epochs: int = 1
    """Passes over the ID training shards."""
    batch_size: int = 64
    """ID samples per step."""
    ood_batch_size: int = 64
    """OOD samples per step; used only when a KD or activation term is on."""
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    lambda_kd: float = 0.0
    """Weight of the KD term."""
    kd_source: Literal["ood", "id"] = "ood"
    """Inputs of the KD term: OOD views (RobustKD-FM) or the ID batch (self-distillation)."""
    ood_include: list[str] | None = None
    """Use only OOD views whose generator name or corruption name is listed; null uses all."""
    temperature: float = 2.0
    """KD temperature T; the KD term is scaled by T²."""
    lambda_act: float = 0.0
    """Weight of the activation-preservation term."""
    act_layers: list[str] | None = None
    """Stored layers used by the activation term; null uses every stored layer."""
    div_source: Literal["ood", "id", "both"] = "ood"
    """Batch that serves as the diverse inputs x_div of the activation term. `id` with
    lambda_kd 0 is feature-distance regularisation against the frozen model."""
    lambda_l2sp: float = 0.0
    """Weight of L2-SP: the squared distance of backbone weights to the pretrained ones."""
    augment: Literal["none", "augmix"] = "none"
    """On-the-fly augmentation of ID images (torchvision AugMix); stored targets are unused
    for augmented images."""
    adv_eps: float = 0.0
    """L-infinity radius, in [0, 1] pixel units, of PGD examples made against the student on
    the fly and trained on with the task loss (adversarial fine-tuning); 0 turns it off."""
    adv_steps: int = 3
    """PGD steps for adversarial fine-tuning."""
    shuffle_buffer: int = 1000
    """Samples in the streaming shuffle buffer."""
    prefetch_batches: int = 2
    """Batch pairs read ahead by a background thread while the step runs; 0 reads them in the
    training thread."""
    seed: int = 0
    torch_threads: int = 2
    log_every_n_steps: int = 10
    resume: bool = True
    """Continue from the last epoch checkpoint in the run folder if there is one."""

    def validate(self) -> list[str]:
        """Return combinations of fields that cannot work together."""
        problems = []
        transformed = [
            name
            for name, on in (("augment", self.augment != "none"), ("adv_eps", self.adv_eps > 0))
            if on
        ]
        uses_id_targets = (self.lambda_kd > 0 and self.kd_source == "id") or (
            self.lambda_act > 0 and self.div_source in ("id", "both")
        )
        if transformed and uses_id_targets:
            problems.append(
                f"train.{transformed[0]}: changes the ID images, so their stored teacher targets "
                "no longer apply; set kd_source and div_source to ood, or turn it off"
            )
        if self.lambda_l2sp > 0 and self.finetune != "full":
            problems.append(
                f"train.lambda_l2sp: L2-SP needs finetune: full, got finetune: {self.finetune}"
            )
        for name in ("lambda_kd", "lambda_act", "lambda_l2sp", "adv_eps"):
            if getattr(self, name) < 0:
                problems.append(f"train.{name}: {getattr(self, name)} must be >= 0")
        if self.temperature <= 0:
            problems.append(f"train.temperature: {self.temperature} must be > 0")
        if self.prefetch_batches < 0:
            problems.append(
                f"train.prefetch_batches: {self.prefetch_batches} must be >= 0 (0 turns it off)"
            )
        return problems


@dataclass
class EvaluateConfig:
    """Evaluation settings of students and the teacher."""

    batch_size: int = 256
    ece_bins: int = 15
    """Equal-width confidence bins of the expected calibration error."""


@dataclass
class RunnerConfig:
    """The plan of `robustkd experiment`: methods × seeds on one shard set, plus WiSE-FT sweeps."""

    methods: list[str] | None = None
    """Methods to run; null runs every method in `methods`."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    baselines: list[str] = field(default_factory=list)
    """Methods whose (ID, OOD) accuracies define the line effective robustness is measured
    against."""
    wise_methods: list[str] = field(default_factory=list)
    """Methods interpolated with the pretrained weights (WiSE-FT)."""
    wise_alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    sweep: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    """Per method, train fields and candidate values. Candidates are compared on validation
    data with the first seed and the best is used for every seed."""
    cka_methods: list[str] = field(default_factory=list)
    """Methods whose per-layer CKA with the teacher is plotted."""
    embedding_method: str | None = None
    """Method whose features are plotted against the teacher's with t-SNE."""


@dataclass
class ExperimentConfig:
    """A whole experiment: data, teacher, OOD generation, precompute, training, evaluation."""

    name: str
    dataset: DatasetConfig
    teacher: BackboneConfig
    ood: OODConfig = field(default_factory=OODConfig)
    precompute: PrecomputeConfig = field(default_factory=PrecomputeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Named training variants, each a set of `train` fields to override."""
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    run_dir: str = "runs/{name}"
    """Folder of checkpoints, metrics and reports; `{name}` is the experiment name."""
    shard_set: str | None = None
    """Id of the shard set to train and evaluate on. A set missing from the local cache is
    pulled from the remote store first (see `shardstore.resolve`). Precompute checks that this
    config produces that id. Null uses the folder `precompute.output`."""

    def shards_dir(self) -> Path:
        return Path(self.precompute.output.format(name=self.name))

    def runs_dir(self) -> Path:
        return Path(self.run_dir.format(name=self.name))

    def method_config(self, method: str) -> TrainConfig:
        """Return `train` with the overrides of the named method applied."""
        if method not in self.methods:
            known = ", ".join(sorted(self.methods)) or "none"
            raise ConfigError([f"methods.{method}: unknown method; known methods: {known}"])
        merged = {**config_to_dict(self.train), **self.methods[method]}
        return config_from_dict(TrainConfig, merged, path=f"methods.{method}")

    def validate(self) -> list[str]:
        """Return cross-field problems that single field types cannot express."""
        problems = []
        if self.dataset.image_size < 32:
            problems.append(
                f"dataset.image_size: {self.dataset.image_size} is below 32 px, the smallest "
                "size the corruption generators accept; set 32 or more"
            )
        for sev in self.ood.test.severities:
            if not 1 <= sev <= 5:
                problems.append(f"ood.test.severities: {sev} is outside 1..5")
        for name in ("max_train_samples", "max_test_samples"):
            value = getattr(self.dataset, name)
            if value is not None and value < 1:
                problems.append(f"dataset.{name}: {value} must be >= 1, or null for every sample")
        if self.dataset.val_samples < 0:
            problems.append(f"dataset.val_samples: {self.dataset.val_samples} must be >= 0")
        if self.precompute.shard_size < 1:
            problems.append(f"precompute.shard_size: {self.precompute.shard_size} must be >= 1")
        problems.extend(self.precompute.validate_resources())
        problems.extend(self.precompute.storage.validate())
        if self.shard_set is not None and not SHARD_SET_ID_PATTERN.match(self.shard_set):
            problems.append(
                f"shard_set: {self.shard_set!r} is not a shard-set id (16 lowercase hex "
                "digits, as printed by `robustkd shards id` or `robustkd shards ls`); "
                "set it to an id, or to null to use precompute.output"
            )
        if self.ood.views_per_image < 0:
            problems.append(f"ood.views_per_image: {self.ood.views_per_image} must be >= 0")
        if self.ood.views_per_image > 0 and not self.ood.train:
            problems.append("ood.train: no generators listed but ood.views_per_image > 0")
        problems.extend(self.train.validate())
        train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        for method, overrides in self.methods.items():
            if not isinstance(overrides, dict):
                problems.append(f"methods.{method}: expected a mapping of train fields")
                continue
            for key in overrides:
                if key not in train_fields:
                    problems.append(
                        f"methods.{method}.{key}: not a train field; "
                        f"allowed: {', '.join(sorted(train_fields))}"
                    )
            if not any(p.startswith(f"methods.{method}.") for p in problems):
                try:
                    self.method_config(method)
                except ConfigError as exc:
                    # Report only what the method's own overrides cause; problems of the
                    # shared `train` section are reported once, under train.
                    problems.extend(
                        f"methods.{method}: {p}" if p.startswith("train.") else p
                        for p in exc.problems
                        if p.split(":")[0].split(".")[-1] in overrides
                    )
        return problems


# --- generic dataclass <-> dict conversion with error collection --------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """Convert `value` to type `tp`, appending a message to `problems` on mismatch."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _convert(non_none[0], value, path, problems)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            problems.append(f"{path}: {value!r} is not one of {allowed}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return None
        return _build(tp, value, path, problems)
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {value!r}")
            return value
        return [_convert(args[0], v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {value!r}")
            return value
        return {k: _convert(args[1], v, f"{path}.{k}", problems) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # PyYAML follows YAML 1.1, which reads `1e-4` (no dot) as a string.
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            problems.append(f"{path}: expected {tp.__name__}, got {value!r}")
        return value
    problems.append(f"{path}: unsupported type {_type_name(tp)}")
    return value


def _build(cls: type, data: dict[str, Any], path: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            problems.append(
                f"{path + '.' if path else ''}{key}: unknown field; "
                f"allowed: {', '.join(sorted(known))}"
            )
    for f in dataclasses.fields(cls):
        fpath = f"{path}.{f.name}" if path else f.name
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], fpath, problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{fpath}: required field is missing")
    try:
        return cls(**kwargs)
    except TypeError:
        return None


def config_from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass `cls` from plain data or raise `ConfigError` listing every problem."""
    problems: list[str] = []
    obj = _build(cls, data, path, problems)
    if obj is not None and hasattr(obj, "validate"):
        # Cross-field checks run even after type errors, so one pass reports everything. A
        # check that trips over a mistyped field is skipped because that field is reported.
        try:
            problems.extend(p for p in obj.validate() if p not in problems)
        except (TypeError, AttributeError, ValueError):
            pass
    if problems:
        raise ConfigError(problems)
    return obj


def config_to_dict(obj: Any) -> dict[str, Any]:
    """Return the config as plain data, ready for YAML or JSON."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; values are parsed as YAML (`1e-3`, `[1, 2]`, `null`)."""
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"override {item!r}: expected key=value, for example train.epochs=2")
            continue
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                problems.append(f"override {item!r}: {part} is not a mapping")
                break
            node = node.setdefault(part, {})
        else:
            node[parts[-1]] = yaml.safe_load(raw)
    if problems:
        raise ConfigError(problems, source="command-line overrides")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an experiment YAML, apply overrides and validate it."""
    path = Path(path)
    if not path.is_file():
        available = sorted(p.stem for p in Path("configs").glob("*.yaml"))
        raise ConfigError(
            [
                f"{path}: config file not found; "
                f"available in configs/: {', '.join(available) or 'none'}"
            ]
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}{where}: invalid YAML: {problem}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a YAML mapping at the top level"])
    data = apply_overrides(data, overrides or [])
    try:
        return config_from_dict(ExperimentConfig, data)
    except ConfigError as exc:
        source = f"{path} with overrides {overrides}" if overrides else str(path)
        raise ConfigError(exc.problems, source=source) from None
