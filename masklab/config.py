"""Run configuration: one dataclass, validation, and a canonical hash (TOML files: masklab/config_file.py).

The hash covers only the fields that decide what the masks are, and only those set away from their
defaults (open_lth's rule): adding an option later with a default that keeps the old behaviour does not
change the id of any existing run. Fields that only say where or how fast things run (data root, device,
stack size, name) and the mask count (a run can be extended) are left out of it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from masklab.config_file import load_toml
from masklab.errors import UserError, did_you_mean

# The names a config may give; the registries that map them to loaders and builders (masklab.data.DATASETS,
# masklab.nn.models.MODELS) need torch, so the config keeps the names itself (tests/test_config.py keeps both
# equal).
DATASET_NAMES = ("digits", "fashion-mnist", "mnist", "cifar10", "synthetic")
MODEL_NAMES = ("mlp", "lenet-300-100", "conv2", "conv4", "conv6", "conv8", "resnet18")
METHODS = ("edge-popup", "biprop", "dense")
RECYCLES = ("none", "iwr", "iterand")
WEIGHT_INITS = ("signed-constant", "kaiming-normal", "unsigned-constant")
DONORS = ("top", "next")
# How many weights each layer keeps (see `RunConfig.keep_rule`): masklab's own rule, the reference code's (runs
# imported from hidden-networks / Biprop / the IWR code), or the counts the imported masks have.
KEEP_RULES = ("masklab", "reference", "stored")
# How a CUDA step computes (masklab/train/precision.py); the CPU path computes in float32 only.
PRECISIONS = ("fp32", "tf32", "bf16")


def method_label(method: str, recycle: str = "none") -> str:
    """'edge-popup', 'biprop+iwr', 'dense', ...: a method with its recycling, as the published tables name it."""
    return method if recycle == "none" else f"{method}+{recycle}"


def parse_method(label: str) -> tuple[str, str]:
    """(method, recycle) of a `method_label`, validating both halves."""
    method, _, recycle = label.partition("+")
    recycle = recycle or "none"
    if method not in METHODS or recycle not in RECYCLES or (method == "dense" and recycle != "none"):
        raise UserError(f"method {label!r} is not one of {', '.join(METHODS)}, optionally with +iwr or +iterand "
                        "(e.g. biprop+iwr; dense has no recycling)")
    return method, recycle

# Fields that do not change what a mask is: left out of the hash.
UNHASHED = ("data_root", "device", "precision", "stack", "name", "masks")
# Fields whose default (None) means "the method's value": an explicit value equal to it hashes as the default.
RESOLVED = ("weight_init", "scale_fan", "lr", "recycle_rate", "recycle_every")
# Fields that only matter when recycling: ignored by the hash when recycle = "none".
RECYCLE_FIELDS = ("recycle_rate", "recycle_every", "recycle_warmup", "recycle_donors")

# Upper limits of the sizes a config may ask for. Past them a value is a typo or cannot run on any machine we
# target; refusing it up front beats a MemoryError (or a run that never ends) after the run directory exists.
# (What this machine's memory holds: masklab/limits.py.)
MAX_MASKS = 1_000_000  # mask files are named by six-digit ids (000000.mask ... 999999.mask)
MAX_EPOCHS = 100_000  # the papers train 100-250 epochs; more is a typo (and a run that never ends)
MAX_INT = 2**31 - 1  # every other count (batch size, stack, warm-up, snapshot period): a 32-bit integer
FLOAT32_MAX = 3.4028234663852886e38  # the largest float32: lr and weight decay must fit (training computes in it)
MAX_INPUT_ELEMENTS = 2**20  # synthetic samples up to 1,048,576 values (3x512x512 fits): 1,280 of them are 5 GiB

# Per-method defaults from REFERENCE.md, used where the user leaves a field at None.
_METHOD_DEFAULTS = {
    "edge-popup": {"weight_init": "signed-constant", "scale_fan": False, "lr": 0.1},
    "biprop": {"weight_init": "kaiming-normal", "scale_fan": True, "lr": 0.1},
    "dense": {"weight_init": "kaiming-normal", "scale_fan": False, "lr": 0.01},
}
_RECYCLE_DEFAULTS = {
    ("edge-popup", "iwr"): {"recycle_rate": 0.1, "recycle_every": 3},
    ("biprop", "iwr"): {"recycle_rate": 0.2, "recycle_every": 10},
    ("edge-popup", "iterand"): {"recycle_rate": 0.1, "recycle_every": 1},
    ("biprop", "iterand"): {"recycle_rate": 0.1, "recycle_every": 1},
}


def option(default: Any, help: str, metavar: str | None = None, *, cli_type: type | None = None,
           flag: bool = True) -> Any:
    """A RunConfig field with what its command-line flag (`--<name-with-dashes>`) says: help text and metavar
    (open_lth keeps hyperparameter help beside the field the same way); `cli_type` overrides the type the
    flag parses (e.g. str for `--stack auto`). The defaults shown in --help come from the field itself.
    `flag=False`: a field with no `generate` flag (written by `masklab import` only)."""
    return field(default=default, metadata={"help": help, "metavar": metavar, "cli_type": cli_type, "flag": flag})


@dataclass(frozen=True)
class RunConfig:
    """Everything a run of masks depends on. Mask i of a run uses score seed `score_seed + i`
    (and data seed `data_seed + i` when `vary_data_seed`); all else is shared."""

    # data
    dataset: str = option("digits", "digits (embedded), fashion-mnist, mnist, cifar10, synthetic", "D")
    data_root: str | None = option(None, "directory holding the dataset files", "DIR")
    input_shape: str | None = option(None, "synthetic dataset only: per-sample shape, e.g. 3x32x32 (at most "
                                     f"{MAX_INPUT_ELEMENTS:,} values)", "SHAPE")
    # model
    model: str = option("mlp", "mlp, lenet-300-100, conv2, conv4, conv6, conv8, resnet18", "M")
    width: float = option(1.0, "width multiplier of every layer", "W")
    weight_init: str | None = option(None, "signed-constant, kaiming-normal or unsigned-constant", "INIT")
    scale_fan: bool | None = option(None, "scale the weights' fan_in by keep (true/false)", "BOOL")
    # method
    method: str = option("edge-popup", "edge-popup, biprop or dense", "M")
    sparsity: float = option(0.5, "fraction of each layer's weights removed, in [0, 1)", "S")
    recycle: str = option("none", "none, iwr or iterand", "R")
    recycle_rate: float | None = option(None, "fraction of a layer recycled", "R")
    recycle_every: int | None = option(None, "recycle every E epochs", "E")
    recycle_warmup: int = option(0, "epochs before the first recycling", "E")
    recycle_donors: str = option("top", "IWR donors: top (the paper), or next (ablation: idx[r:2r])", "D")
    # optimisation
    epochs: int = option(20, f"epochs per mask (at most {MAX_EPOCHS:,})", "E")
    batch_size: int = option(128, "batch size", "B")
    lr: float | None = option(None, "learning rate (cosine schedule per epoch)", "LR")
    momentum: float = option(0.9, "SGD momentum", "M")
    weight_decay: float = option(1e-4, "weight decay (on the scores; on the weights for dense)", "WD")
    # seeds and count
    weight_seed: int = option(0, "seed of the random weights, shared by all masks", "S")
    score_seed: int = option(0, "score seed of mask 0; mask i uses S + i", "S")
    data_seed: int = option(0, "seed of batch order and augmentation", "S")
    vary_data_seed: bool = option(False, "mask i also uses data seed S + i")
    masks: int = option(16, f"number of masks (at most {MAX_MASKS:,})", "N")
    # what is stored beside the masks
    keep_scores: bool = option(False, "store each mask's final scores (float16)")
    snapshot_every: int = option(0, "store each mask every E epochs (0: never)", "E")
    # imported runs (`masklab import`, masklab/interop; not `generate` flags): how many weights a layer keeps and
    # what was imported. keep_rule "masklab": n - int(sparsity * n) (every trained run); "reference":
    # n - int((1 - keep_fraction) * n), the rule of the reference code's GetSubnet with keep_fraction = its
    # prune_rate; "stored": the per-layer counts of the imported masks (run.json's `imported.n_keep`). `imported`:
    # the sha256 digest of what was imported (run.json's `imported` section: the sources' sha256s, format, rule,
    # ...), so that it is part of the run id.
    keep_rule: str = option("masklab", "how many weights a layer keeps: masklab, reference or stored (imports)",
                            flag=False)
    keep_fraction: float | None = option(None, "the reference rule's fraction kept (imports)", flag=False)
    imported: str | None = option(None, "the digest of what masklab import imported", flag=False)
    # where and how (not hashed)
    stack: int = option(0, "masks trained together in one pass over the shared weights, or auto (0): the K a "
                        "measured rule finds fastest. On CPU a mask's bits, scores and figures are the same for "
                        "any K and thread count; on CUDA they may differ by rounding (each mask records its K "
                        "and device)", "K", cli_type=str)
    device: str = option("auto", "auto, cpu, cuda or cuda:N", "D")
    precision: str = option("fp32", "how a CUDA step computes: fp32 (reproducible masks), tf32 (TF32 products "
                            "and convolutions) or bf16 (bfloat16 forward pass); each mask records it. The CPU "
                            "computes in fp32 only", "P")
    name: str | None = option(None, "run name: the run id is NAME-<hash8> (default <dataset>-<model>-<method>-"
                              "s<sparsity>)", "NAME")
    _extra: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        # -0.0 is 0.0: the same run (hash, id and name), whichever way the zero was written.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and value == 0.0:
                object.__setattr__(self, f.name, 0.0)

    # ---- derived values -------------------------------------------------------------------------
    @property
    def keep(self) -> float:
        """The fraction of each layer kept: 1 - sparsity (the reference rule's keep_fraction where it has one)."""
        if self.keep_rule == "reference" and self.keep_fraction is not None:
            return self.keep_fraction
        return 1.0 - self.sparsity

    def resolved(self, key: str) -> Any:
        """The effective value of a field whose default depends on the method (None in the dataclass)."""
        value = getattr(self, key)
        if value is not None:
            return value
        if key in ("recycle_rate", "recycle_every"):
            return _RECYCLE_DEFAULTS.get((self.method, self.recycle), {}).get(key)
        return _METHOD_DEFAULTS.get(self.method, {}).get(key)

    def resolved_config(self) -> dict[str, Any]:
        """Every field with the value the run uses: each method-dependent field (RESOLVED: `lr`, `weight_init`,
        `scale_fan`, `recycle_rate`, `recycle_every`) left at None is the method's default; the rest as set.
        The hash stays over what the user set (`hashed_fields`): `RunConfig(**resolved_config())` has this
        config's hash. An imported run (masklab import) was not trained by masklab: its training fields stay as
        set (None), since no masklab default produced its masks.

        Examples
        --------
        >>> RunConfig(method="biprop").resolved_config()["lr"], RunConfig(lr=0.05).resolved_config()["lr"]
        (0.1, 0.05)
        """
        values = self.to_dict()
        if self.imported is None:
            for key in RESOLVED:
                values[key] = self.resolved(key)
        return values

    def resolve(self) -> RunConfig:
        """This config with every method-dependent field at the value the run uses (`resolved_config`); same hash
        and run id."""
        return self.replace(**{key: self.resolved_config()[key] for key in RESOLVED})

    def seeds(self, i: int) -> tuple[int, int, int]:
        """(weight_seed, score_seed, data_seed) of mask i."""
        data_seed = self.data_seed + i if self.vary_data_seed else self.data_seed
        return self.weight_seed, self.score_seed + i, data_seed

    # ---- validation -----------------------------------------------------------------------------
    def validate(self) -> RunConfig:
        """Raise UserError naming the field, the value and what is allowed. Returns self."""
        def bad(name: str, allowed: str) -> UserError:
            return UserError(f"config field '{name}' = {getattr(self, name)!r} is invalid: {allowed}")

        def choice(name: str, options) -> None:
            if getattr(self, name) not in options:
                raise bad(name, "choose one of " + ", ".join(map(str, options))
                          + did_you_mean(getattr(self, name), options))

        choice("dataset", DATASET_NAMES)
        choice("model", MODEL_NAMES)
        choice("method", METHODS)
        choice("recycle", RECYCLES)
        choice("recycle_donors", DONORS)
        if self.weight_init is not None:
            choice("weight_init", WEIGHT_INITS)
        if not (isinstance(self.sparsity, (int, float)) and 0.0 <= self.sparsity < 1.0):
            raise bad("sparsity", "the fraction of weights removed must lie in [0, 1)")
        choice("keep_rule", KEEP_RULES)
        if self.keep_rule != "masklab" and self.imported is None:
            raise bad("keep_rule", "only imported runs (masklab import) keep by another rule than masklab's")
        if self.keep_rule == "reference":
            fraction = self.keep_fraction
            if not (fraction is not None and _is_number(fraction) and 0.0 < fraction <= 1.0):
                raise bad("keep_fraction", "the reference rule needs the fraction kept, in (0, 1]")
        elif self.keep_fraction is not None:
            raise bad("keep_fraction", "it applies to keep_rule 'reference' only")
        if self.imported is not None:
            if not (isinstance(self.imported, str) and re.fullmatch(r"[0-9a-f]{64}", self.imported)):
                raise bad("imported", "the digest of an import is 64 hex digits (written by masklab import)")
            if self.method == "dense" or self.recycle != "none":
                raise bad("method", "imported runs are edge-popup or biprop, without recycling")
        if self.method == "dense" and self.recycle != "none":
            raise bad("recycle", "recycling needs scores: use method edge-popup or biprop")
        if self.recycle != "none":
            rate = self.resolved("recycle_rate")
            if not (isinstance(rate, (int, float)) and 0.0 < rate <= 0.5):
                raise UserError(f"config field 'recycle_rate' = {rate!r} is invalid: it must lie in (0, 0.5]")
            every = self.resolved("recycle_every")
            if not isinstance(every, int) or isinstance(every, bool) or not 1 <= every <= MAX_INT:
                raise UserError(f"config field 'recycle_every' = {every!r} is invalid: must be an integer >= 1 "
                                "(epochs)")
        if not (isinstance(self.width, (int, float)) and math.isfinite(self.width) and self.width > 0):
            raise bad("width", "the width multiplier must be > 0 (e.g. 0.25, 0.5, 1)")
        for name, low, high, why in (
                ("epochs", 1, MAX_EPOCHS, f"at most {MAX_EPOCHS:,} (the papers train 100-250)"),
                ("batch_size", 1, MAX_INT, "at most 2^31 - 1"),
                ("masks", 1, MAX_MASKS, f"at most {MAX_MASKS:,} per run (mask files have six-digit ids); "
                                        "split larger studies into runs with different score seeds"),
                ("recycle_warmup", 0, MAX_INT, "at most 2^31 - 1"), ("snapshot_every", 0, MAX_INT, "at most 2^31 - 1"),
                ("stack", 0, MAX_INT, "at most 2^31 - 1")):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise bad(name, f"must be an integer >= {low}")
            if value > high:
                raise bad(name, f"must be an integer >= {low} and {why}")
        for name in ("weight_seed", "score_seed", "data_seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
                raise bad(name, "must be an integer in [0, 2^31)")
        # mask i uses score seed S + i (and data seed D + i with vary_data_seed): the last one must be a seed too
        for name in ("score_seed",) + (("data_seed",) if self.vary_data_seed else ()):
            if getattr(self, name) + self.masks - 1 >= 2**31:
                raise bad(name, f"mask i uses seed {name.split('_')[0]}_seed + i, so {name} + masks - 1 "
                                f"({getattr(self, name) + self.masks - 1}) must stay below 2^31")
        lr = self.resolved("lr")
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise UserError(f"config field 'lr' = {lr!r} is invalid: the learning rate must be > 0")
        if not (_is_number(self.momentum) and 0 <= self.momentum < 1):
            raise bad("momentum", "must lie in [0, 1)")
        if not (_is_number(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", "must be a number >= 0")
        for name in ("lr", "weight_decay"):  # training computes in float32: refuse what it cannot hold
            value = getattr(self, name)
            if _is_number(value) and abs(value) > FLOAT32_MAX:
                raise bad(name, f"more than float32, in which training computes, can hold ({FLOAT32_MAX:.4g})")
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise bad("device", "use auto, cpu, cuda or cuda:N")
        choice("precision", PRECISIONS)
        if self.name is not None and (not isinstance(self.name, str) or ".." in self.name
                                      or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", self.name)):
            raise bad("name", "use 1-64 letters, digits, '.', '_', '+', '-' (no slashes, no '..', not starting "
                              "with '.')")
        if self.input_shape is not None:
            if not isinstance(self.input_shape, str) or not re.fullmatch(r"[1-9]\d{0,9}(x[1-9]\d{0,9})*",
                                                                           self.input_shape):
                raise bad("input_shape", "write the per-sample shape like 3x32x32 or 64")
            elements = math.prod(int(d) for d in self.input_shape.split("x"))
            if elements > MAX_INPUT_ELEMENTS:
                raise bad("input_shape", f"a sample of {elements:,} values is more than the limit of "
                                         f"{MAX_INPUT_ELEMENTS:,} (e.g. 3x512x512 fits)")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and not _is_utf8(value):
                # e.g. a path of bytes that are not UTF-8 (Python keeps them as lone surrogates): config.toml
                # is UTF-8 and cannot hold it, so the run could not be reopened
                raise bad(f.name, "it is not UTF-8 text, which config.toml must be; rename the directory (or "
                                  "link to it from a UTF-8 path)")
        return self

    # ---- hashing and ids ------------------------------------------------------------------------
    def hashed_fields(self) -> dict[str, Any]:
        """The fields set away from their defaults that decide the masks, in canonical form.

        Left out: the UNHASHED fields; fields at their default; a RESOLVED field set explicitly to the
        method's own default (`lr = 0.1` for edge-popup is the default); the recycling fields when
        `recycle = "none"`. Numbers are canonical by field type (`sparsity = 1` hashes as 1.0).
        """
        out = {}
        for f in fields(self):
            if f.name.startswith("_") or f.name in UNHASHED:
                continue
            if self.recycle == "none" and f.name in RECYCLE_FIELDS:
                continue
            value = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
            if value == default:
                continue
            if f.name in RESOLVED and value == self.replace(**{f.name: None}).resolved(f.name):
                continue
            if field_type(f.name) is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            out[f.name] = value
        return out

    @property
    def hash(self) -> str:
        blob = json.dumps(self.hashed_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def default_name(self) -> str:
        method = method_label(self.method, self.recycle)
        return f"{self.dataset}-{self.model}-{method}-s{self.sparsity:g}"

    @property
    def run_id(self) -> str:
        return f"{self.name or self.default_name}-{self.hash[:8]}"

    # ---- dict / TOML ----------------------------------------------------------------------------
    def to_dict(self, *, non_default: bool = False) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            if f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else None
            if non_default and value == default:
                continue
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> RunConfig:
        known = {f.name: f for f in fields(cls) if not f.name.startswith("_")}
        kwargs = {}
        for key, value in values.items():
            key = key.replace("-", "_")
            if key not in known:
                raise UserError(f"{source}: unknown key '{key}'; known keys: {', '.join(sorted(known))}")
            kwargs[key] = _coerce(key, value, known[key], source)
        return cls(**kwargs)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


def default_text(name: str) -> str | None:
    """How --help states field `name`'s default: its value, or for a field resolved by the method (None
    in the dataclass) each method's value, from the same tables `resolved` reads."""
    if name in ("weight_init", "scale_fan", "lr"):
        return "the method's: " + ", ".join(f"{m} {d[name]}" for m, d in _METHOD_DEFAULTS.items())
    if name in ("recycle_rate", "recycle_every"):
        return "the method's: " + ", ".join(f"{m}+{r} {d[name]}" for (m, r), d in _RECYCLE_DEFAULTS.items())
    default = next(f.default for f in fields(RunConfig) if f.name == name)
    if name == "stack":
        return "auto"
    if default is None or default is False:
        return None
    return f"{default:g}" if isinstance(default, float) else str(default)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(RunConfig)


def field_type(name: str) -> type:
    """The type of RunConfig field `name` without its None (from the annotations: `float | None` -> float)."""
    hint = _hints()[name]
    args = [t for t in typing.get_args(hint) if t is not type(None)]
    return args[0] if args else hint


def parse_bool(text: str) -> bool:
    """true/false, 1/0, yes/no (any case) as a bool; ValueError for anything else."""
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(text)
    return text.lower() in ("true", "1", "yes")


def _coerce(key: str, value: Any, f: dataclasses.Field, source: str) -> Any:
    kind = field_type(f.name)
    if value is None:
        return None
    try:
        if kind is bool:
            if isinstance(value, str):
                return parse_bool(value)
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            if key == "stack" and value == "auto":
                return 0
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        expected = kind.__name__
        raise UserError(f"{source}: key '{key}' = {value!r} is not a valid {expected}") from None


def read_config(path: str | Path) -> RunConfig:
    """The RunConfig of a TOML config file (`masklab.config_file.load_toml`), validated key by key."""
    return RunConfig.from_dict(load_toml(path), source=f"config file {path}")
