"""`shoal train --config`: the TOML a user writes, and its error paths."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shoal.training.run_config import ConfigError, dump_run_config, load_run_config
from shoal.training.runner import round_config

GOOD = """
[run]
name = "r"
rounds = 2
compression = "none"
[model]
factory = "shoal.training.model:tiny_gpt"
kwargs = {n_layer = 1, n_embd = 32, n_head = 2}
[data]
path = "stdlib"
batch_size = 4
[node]
data_dir = "{d}"
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.toml"
    p.write_text(text.replace("{d}", str(tmp_path / "n")))
    return p


def test_good_config_round_trips_and_builds_the_model(tmp_path: Path) -> None:
    cfg = load_run_config(_write(tmp_path, GOOD))
    assert cfg.name == "r" and cfg.rounds == 2 and cfg.compression == "none"
    model = cfg.build_model()
    assert sum(p.numel() for p in model.parameters()) > 0
    again = load_run_config(_write(tmp_path, dump_run_config(cfg)))
    assert again == cfg
    robust = load_run_config(
        _write(tmp_path, GOOD.replace("rounds = 2", 'rounds = 2\naggregator = "krum"'))
    )
    assert robust.aggregator == "krum"
    assert load_run_config(_write(tmp_path, dump_run_config(robust))) == robust
    slow = load_run_config(
        _write(tmp_path, GOOD.replace("rounds = 2", "rounds = 2\nprogress_interval_s = 5.0"))
    )
    assert slow.progress_interval_s == 5.0
    rc = round_config(slow)
    assert rc.poll_interval_s == rc.publish_interval_s == 5.0
    assert load_run_config(_write(tmp_path, dump_run_config(slow))) == slow


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("[run]", "[runn]"), "unknown section"),
        (("rounds = 2", "roundz = 2"), "unknown key run.roundz"),
        (('compression = "none"', 'compression = "zip"'), "compression"),
        (("rounds = 2", "rounds = 0"), "rounds must be >= 1"),
        (('name = "r"\n', ""), "missing name"),
        (("batch_size = 4", "batch_size = 4\nrank = 3"), "rank"),
        (("[data]", "[data"), "cannot read"),
        (('compression = "none"', 'compression = "none"\naggregator = "mode"'), "aggregator"),
        (("rounds = 2", "rounds = 2\nprogress_interval_s = 0.1"), "progress_interval_s"),
        (
            ('compression = "none"', 'compression = "int4"\nsecure_aggregation = true'),
            "secure_aggregation supports",
        ),
        (
            ('compression = "none"', 'compression = "int4z"\nsecure_aggregation = true'),
            "secure_aggregation supports",
        ),
        (("rounds = 2", "rounds = 2\nprogress_interval_s = true"), "progress_interval_s"),
        (("rounds = 2", "rounds = 2\nprogress_interval_s = inf"), "progress_interval_s"),
        (("rounds = 2", 'rounds = 2\nprogress_interval_s = "5"'), "progress_interval_s"),
        (("[node]", "[optim]\ninner_weight_decay = -0.1\n[node]"), "inner_weight_decay"),
        (("[node]", "[optim]\ninner_weight_decay = nan\n[node]"), "inner_weight_decay"),
        (("[node]", '[optim]\ninner_weight_decay = "0"\n[node]'), "inner_weight_decay"),
    ],
)
def test_bad_configs_get_clear_errors(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(_write(tmp_path, GOOD.replace(*edit)))


def test_bad_model_factory(tmp_path: Path) -> None:
    cfg = load_run_config(_write(tmp_path, GOOD.replace("model:tiny_gpt", "model:nope")))
    with pytest.raises(ConfigError, match="cannot import model factory"):
        cfg.build_model()


def test_cli_exits_2_on_bad_config_without_joining(tmp_path: Path) -> None:
    p = _write(tmp_path, GOOD.replace("tiny_gpt", "missing_factory"))
    out = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "train", "--config", str(p)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert "cannot import model factory" in out.stderr
    assert not (tmp_path / "n" / "node.key").exists()


def test_model_init_starts_from_a_checkpoints_params(tmp_path: Path) -> None:
    from shoal.training.checkpoint import Checkpoint, save_checkpoint
    from shoal.training.model import tiny_gpt

    pretrained = tiny_gpt(n_layer=1, n_embd=32, n_head=2)
    gen = torch.Generator().manual_seed(123)  # "trained": unlike a fresh model's params
    named = {
        n: p.detach() + torch.randn(p.shape, generator=gen)
        for n, p in pretrained.named_parameters()
    }
    ckpt = tmp_path / "pre.safetensors"
    save_checkpoint(ckpt, Checkpoint(named, 0, None, {}))
    text = GOOD.replace("[data]", f'init = "{ckpt}"\n\n[data]')
    cfg = load_run_config(_write(tmp_path, text))
    assert cfg.model_init == ckpt
    model = cfg.build_model()
    assert all(torch.equal(p, named[n]) for n, p in model.named_parameters())
    fresh = load_run_config(_write(tmp_path, GOOD)).build_model()
    assert not any(torch.equal(p, named[n]) for n, p in fresh.named_parameters())
    assert load_run_config(_write(tmp_path, dump_run_config(cfg))) == cfg
    # a checkpoint of another model, a corrupt file, a missing file: clear errors
    small = dict(tiny_gpt(n_layer=1, n_embd=16, n_head=2).named_parameters())
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, Checkpoint({n: p.detach() for n, p in small.items()}, 0, None, {}))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(ckpt.read_bytes()[:-100])
    for path, match in [(other, "has shape"), (bad, "model.init"), (tmp_path / "no", "model.init")]:
        cfg = load_run_config(
            _write(tmp_path, GOOD.replace("[data]", f'init = "{path}"\n\n[data]'))
        )
        with pytest.raises(ConfigError, match=match):
            cfg.build_model()


def test_demo_settings_reach_each_nodes_run_toml(tmp_path: Path) -> None:
    """What `shoal demo` (and the DDP benchmark) sets is what each node process loads."""
    from shoal.training.demo import DemoConfig, node_config

    demo = DemoConfig(out=tmp_path, inner_lr=2e-3, outer_lr=0.5, outer_momentum=0.9, seed=3,
                      inner_weight_decay=0.02)  # fmt: skip
    cfg = node_config(demo, 1, ["boot"])
    loaded = load_run_config(_write(tmp_path, dump_run_config(cfg)))
    assert (loaded.inner_lr, loaded.outer_lr, loaded.outer_momentum, loaded.seed) == (
        2e-3, 0.5, 0.9, 3,
    )  # fmt: skip
    assert loaded.inner_weight_decay == 0.02
