"""A training run described in TOML, for ``shoal train --config run.toml``.

[run]
name = "my-run"          # peers with the same name train together
rounds = 10              # outer rounds this node takes part in
inner_steps = 50         # H: local steps per round
target_samples = 0       # close a round at this many swarm samples (0: expected_peers*H*batch)
expected_peers = 4
deadline_s = 120.0       # ...or this long after this peer reached the round's end
group_size = 16          # Moshpit group size
compression = "int8"     # "none", "int8", "int4" or "int4z" (int4, entropy-coded)
progress_interval_s = 1.0  # publish / poll round progress this often (raise for long rounds)
seed = 0                 # same seed -> same initial model on every peer
overlap = false          # average round r while round r+1 computes (outer step one round late)
aggregator = "mean"      # or a robust rule: median, trimmed_mean, centered_clip, krum
secure_aggregation = false  # SecAgg: the group's collector sees only the sum (mean only)

[model]
factory = "shoal.training.model:tiny_gpt"   # importable "module:callable" -> nn.Module
kwargs = {}                                 # model(x, y) must return the loss
init = "pretrained.safetensors"             # optional: start from a shoal checkpoint's params

[data]
path = "stdlib"          # or a local text file / directory
batch_size = 16
block_size = 64
rank = 0                 # this peer's shard of the training split
world = 1

[optim]
inner_lr = 0.003
inner_weight_decay = 0.1 # the inner AdamW's (decoupled) weight decay
outer_lr = 0.7
outer_momentum = 0.9

[node]
data_dir = "/var/lib/shoal/n0"
listen = "127.0.0.1:0"
bootstrap = ["sh1...@127.0.0.1:7000"]

[privacy]                # optional; differential privacy (shoal.privacy)
clip_norm = 1.0          # each round's pseudo-gradient clipped to this L2 norm...
noise_multiplier = 1.1   # ...plus N(0, (noise_multiplier * clip_norm)^2) per coordinate
delta = 1e-5             # epsilon is reported for this delta
dp_sgd_noise_multiplier = 1.0  # optional: per-sample DP-SGD inner steps (Opacus)
dp_sgd_max_grad_norm = 1.0     # each sample's gradient clipped to this
"""

from __future__ import annotations

import importlib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from shoal.aggregation import AGGREGATORS
from shoal.privacy.settings import DEFAULT_DELTA, DpSettings, DpSgdSettings
from shoal.secagg.group_driver import require_mean
from shoal.secagg.network_messages import MAX_SECAGG_GROUP
from shoal.training.checkpoint import CheckpointError, load_checkpoint

COMPRESSIONS = ("none", "int8", "int4", "int4z")


class ConfigError(ValueError):
    pass


@dataclass
class RunConfig:
    name: str
    data_dir: Path
    rounds: int = 10
    inner_steps: int = 50
    target_samples: int = 0
    expected_peers: int = 1
    deadline_s: float = 120.0
    group_size: int = 16
    compression: str = "int8"
    # Progress is published, and polled at most, this often. Loopback demo rounds
    # last seconds; rounds of minutes can use 5-10 s and cut the control traffic
    # (DHT puts and gets) by as much (docs/BENCHMARKS.md, DDP comparison).
    progress_interval_s: float = 1.0
    seed: int = 0
    overlap: bool = False
    aggregator: str = "mean"
    secure_aggregation: bool = False
    model_factory: str = "shoal.training.model:tiny_gpt"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # A shoal checkpoint (DiLoCo.save_checkpoint, `shoal train`) whose params the model
    # starts from, e.g. one pretrained on one node; every peer must name the same file.
    model_init: Path | None = None
    data_path: str = "stdlib"
    batch_size: int = 16
    block_size: int = 64
    rank: int = 0
    world: int = 1
    inner_lr: float = 3e-3
    # AdamW's usual 0.1. On the benchmark task (2000 steps from a pretrained start)
    # both per-step DDP and DiLoCo measured better at 0-0.02 (docs/BENCHMARKS.md).
    inner_weight_decay: float = 0.1
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    listen: str = "127.0.0.1:0"
    bootstrap: list[str] = field(default_factory=list)
    # [privacy]: pseudo-gradient DP needs clip_norm and noise_multiplier; DP-SGD needs
    # both dp_sgd_* keys; None = off
    dp_clip_norm: float | None = None
    dp_noise_multiplier: float | None = None
    dp_delta: float | None = None
    dp_sgd_noise_multiplier: float | None = None
    dp_sgd_max_grad_norm: float | None = None
    # demo bookkeeping: where to write progress lines and the result JSON
    progress_file: Path | None = None
    result_file: Path | None = None

    @property
    def effective_target(self) -> int:
        return self.target_samples or self.expected_peers * self.inner_steps * self.batch_size

    @property
    def dp(self) -> DpSettings | None:
        """Pseudo-gradient DP settings (checked by ``_check``), or None when off."""
        if self.dp_clip_norm is None or self.dp_noise_multiplier is None:
            return None
        return DpSettings(self.dp_clip_norm, self.dp_noise_multiplier, self.dp_delta_or_default)

    @property
    def dp_sgd(self) -> DpSgdSettings | None:
        if self.dp_sgd_noise_multiplier is None or self.dp_sgd_max_grad_norm is None:
            return None
        return DpSgdSettings(
            self.dp_sgd_noise_multiplier, self.dp_sgd_max_grad_norm, self.dp_delta_or_default
        )

    @property
    def dp_delta_or_default(self) -> float:
        return DEFAULT_DELTA if self.dp_delta is None else self.dp_delta

    def build_model(self) -> torch.nn.Module:
        mod_name, sep, attr = self.model_factory.partition(":")
        if not sep:
            raise ConfigError(
                f"model.factory must be 'module:callable', got {self.model_factory!r}"
            )
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot import model factory {self.model_factory!r}: {exc}") from exc
        torch.manual_seed(self.seed)
        model = factory(**self.model_kwargs)
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"{self.model_factory} returned {type(model).__name__}, not a Module")
        if self.model_init is not None:
            load_init_params(model, self.model_init)
        return model


def load_init_params(model: torch.nn.Module, path: Path) -> None:
    """Copy a checkpoint's params into ``model``; any name or shape mismatch is an error."""
    try:
        ckpt = load_checkpoint(path)
    except (OSError, CheckpointError) as exc:
        raise ConfigError(f"model.init: {exc}") from exc
    own = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(own) != set(ckpt.params):
        missing, extra = sorted(set(own) - set(ckpt.params)), sorted(set(ckpt.params) - set(own))
        raise ConfigError(
            f"model.init {path}: params missing {missing[:5]}, unexpected {extra[:5]}"
        )
    with torch.no_grad():
        for name, p in own.items():
            src = ckpt.params[name]
            if src.shape != p.shape:
                raise ConfigError(
                    f"model.init {path}: {name} has shape {tuple(src.shape)}, "
                    f"the model {tuple(p.shape)}"
                )
            p.copy_(src)


_SECTIONS: dict[str, dict[str, str]] = {
    "run": {
        "name": "name", "rounds": "rounds", "inner_steps": "inner_steps",
        "target_samples": "target_samples", "expected_peers": "expected_peers",
        "deadline_s": "deadline_s", "group_size": "group_size", "compression": "compression",
        "progress_interval_s": "progress_interval_s",
        "seed": "seed", "overlap": "overlap", "aggregator": "aggregator",
        "secure_aggregation": "secure_aggregation",
    },
    "model": {"factory": "model_factory", "kwargs": "model_kwargs", "init": "model_init"},
    "data": {
        "path": "data_path", "batch_size": "batch_size", "block_size": "block_size",
        "rank": "rank", "world": "world",
    },
    "optim": {
        "inner_lr": "inner_lr", "inner_weight_decay": "inner_weight_decay",
        "outer_lr": "outer_lr", "outer_momentum": "outer_momentum",
    },
    "node": {"data_dir": "data_dir", "listen": "listen", "bootstrap": "bootstrap"},
    "output": {"progress_file": "progress_file", "result_file": "result_file"},
    "privacy": {
        "clip_norm": "dp_clip_norm", "noise_multiplier": "dp_noise_multiplier",
        "delta": "dp_delta", "dp_sgd_noise_multiplier": "dp_sgd_noise_multiplier",
        "dp_sgd_max_grad_norm": "dp_sgd_max_grad_norm",
    },
}  # fmt: skip


def load_run_config(path: Path) -> RunConfig:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    values: dict[str, Any] = {}
    for section, body in raw.items():
        keys = _SECTIONS.get(section)
        if keys is None or not isinstance(body, dict):
            raise ConfigError(f"unknown section [{section}] in {path}")
        for k, v in body.items():
            if k not in keys:
                raise ConfigError(f"unknown key {section}.{k} in {path}")
            values[keys[k]] = v
    for required in ("name", "data_dir"):
        if required not in values:
            raise ConfigError(f"{path}: missing {required}")
    for p in ("data_dir", "progress_file", "result_file", "model_init"):
        if p in values:
            values[p] = Path(values[p])
    try:
        cfg = RunConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc
    _check(cfg)
    return cfg


def _check(cfg: RunConfig) -> None:
    if cfg.compression not in COMPRESSIONS:
        raise ConfigError(
            f"run.compression must be one of {', '.join(COMPRESSIONS)}, got {cfg.compression!r}"
        )
    v = cfg.progress_interval_s
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.25 <= v < math.inf:
        raise ConfigError(f"run.progress_interval_s must be a number >= 0.25, got {v!r}")
    wd = cfg.inner_weight_decay
    if isinstance(wd, bool) or not isinstance(wd, int | float) or not 0 <= wd < math.inf:
        raise ConfigError(f"optim.inner_weight_decay must be a number >= 0, got {wd!r}")
    for name in ("rounds", "inner_steps", "expected_peers", "group_size", "batch_size", "world"):
        if int(getattr(cfg, name)) < 1:
            raise ConfigError(f"{name} must be >= 1")
    if cfg.aggregator not in AGGREGATORS:
        raise ConfigError(
            f"run.aggregator must be one of {', '.join(AGGREGATORS)}, got {cfg.aggregator!r}"
        )
    if not isinstance(cfg.overlap, bool):
        raise ConfigError("run.overlap must be true or false")
    if not isinstance(cfg.secure_aggregation, bool):
        raise ConfigError("run.secure_aggregation must be true or false")
    if cfg.secure_aggregation:
        try:
            require_mean(cfg.aggregator)
        except ValueError as exc:
            raise ConfigError(f"run.secure_aggregation: {exc}") from None
        if cfg.compression not in ("none", "int8"):  # its result stream carries fp32 or int8
            raise ConfigError("run.secure_aggregation supports compression 'none' or 'int8'")
        if cfg.group_size > MAX_SECAGG_GROUP:
            raise ConfigError(f"run.group_size must be <= {MAX_SECAGG_GROUP} with "
                              "secure_aggregation (masks and shares grow as n^2)")  # fmt: skip
    if not 0 <= cfg.rank < cfg.world:
        raise ConfigError("data.rank must be in [0, world)")
    _check_privacy(cfg)


def _check_privacy(cfg: RunConfig) -> None:
    pairs = (("clip_norm", "noise_multiplier"), ("dp_sgd_noise_multiplier", "dp_sgd_max_grad_norm"))
    for a, b in pairs:  # half a mechanism is a typo, not "DP off"
        keys = _SECTIONS["privacy"]
        va, vb = getattr(cfg, keys[a]), getattr(cfg, keys[b])
        if (va is None) != (vb is None):
            have, missing = (a, b) if vb is None else (b, a)
            raise ConfigError(f"privacy.{have} is set but privacy.{missing} is not: set both")
    try:
        dp, dp_sgd = cfg.dp, cfg.dp_sgd
        if cfg.dp_delta is not None and dp is None and dp_sgd is None:
            raise ValueError("delta is set but no mechanism is: set clip_norm and "
                             "noise_multiplier, or the dp_sgd_* keys")  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"privacy.{exc}") from None


def dump_run_config(cfg: RunConfig) -> str:
    """TOML text for ``cfg`` (the demo writes one per node)."""

    def lit(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(lit(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {lit(x)}" for k, x in v.items()) + "}"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines: list[str] = []
    for section, keys in _SECTIONS.items():
        body = [(k, getattr(cfg, attr)) for k, attr in keys.items()]
        body = [(k, v) for k, v in body if v is not None]
        if body:
            lines.append(f"[{section}]")
            lines += [f"{k} = {lit(v)}" for k, v in body]
            lines.append("")
    return "\n".join(lines)
