"""Fewer int4 levels for more rounds at the same bytes: does the trade pay? (issue 3)

    python benchmarks/study_coarse_levels.py --probe
    python benchmarks/study_coarse_levels.py \
        --arms "diloco:H=125,olr=0.35,mom=0.9,codec=int4L2,rfb=1"

A study encoder, not a shoal codec: ``int4L<L>`` writes int4's payload (so int4's
decoder and checks read it unchanged) with a step of absmax / L instead of absmax / 7,
codes in [-L, L], entropy-coded on the wire as int4z is. Fewer levels, fewer bits per
value after Huffman, so more rounds fit in the same bytes.

``--probe``: one real pseudo-gradient (one peer, 250 local steps from the
``--pretrain`` start) and, per encoder, its bits per value on the wire and its relative
error. ``--arms``: `bench_ddp_gap.py`'s in-process arms (same option syntax; ``rfb=1``
adds error feedback on the re-encoded average), from the same start, 2000 steps per
peer, each with the bits per value its contributions actually took.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

import shoal.training.local as local
from bench_ddp_gap import parse_arm, pretrained
from shoal.compression import entropy
from shoal.compression.codec import Buffer, EncodedTensor, get_codec
from shoal.compression.int4 import Int4Codec, payload_size
from shoal.training.data import stdlib_corpus
from shoal.training.diloco_math import flatten_params, pseudo_gradient
from shoal.training.local import train_single_node
from shoal.training.model import GPT, GPTConfig


class CoarseInt4(Int4Codec):
    """int4's layout with ``levels`` steps each side of 0 (int4 itself is 7)."""

    entropy_coded = True

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels
        self.name = f"int4L{levels}"

    def encode(
        self, tensor: torch.Tensor, out: Buffer | None = None, *,
        roundtrip: torch.Tensor | None = None,
    ) -> EncodedTensor:  # fmt: skip
        x = tensor.detach().reshape(-1).float()
        n, c = x.numel(), self.chunk_size
        rows = torch.zeros(-(-n // c) * c)
        rows[:n] = x
        rows = rows.view(-1, c)
        step = rows.abs().amax(1) / self.levels
        safe = torch.where(step > 0, step, torch.ones(()))
        q = (rows / safe[:, None]).round().clamp(-self.levels, self.levels).reshape(-1)[:n]
        nib = (q + 8).to(torch.uint8)
        if n % 2:
            nib = torch.cat([nib, torch.tensor([8], dtype=torch.uint8)])
        pairs = nib.view(-1, 2)
        scales = (step * 7).numpy().astype("<f4").tobytes()  # decode: q / 7 * scale
        payload = bytearray(scales + (pairs[:, 1] * 16 + pairs[:, 0]).numpy().tobytes())
        assert len(payload) == payload_size(n, c)
        enc = EncodedTensor(self.name, tuple(tensor.shape), payload, chunk_size=c)
        if roundtrip is not None:
            self.decode_range(enc, 0, n, roundtrip)
        return enc


def study_codec(name: str) -> Any:
    if name.startswith("int4L"):
        return CoarseInt4(int(name[5:]))
    return get_codec(name)


def probe(init: dict[str, torch.Tensor] | None) -> None:
    model = GPT(GPTConfig(), seed=0)
    if init is not None:
        model.load_state_dict(init)
    start = flatten_params(model.parameters())
    res = train_single_node(250, batch_size=16, init=init, eval_batches=1, stream_seed=7)
    assert res.model is not None
    delta = pseudo_gradient(start, flatten_params(res.model.parameters()))
    for name in ["int4"] + [f"int4L{levels}" for levels in (5, 4, 3, 2, 1)]:
        codec = study_codec(name)
        enc = codec.encode(delta)
        back = codec.decode(enc).reshape(-1)
        bits = 8 * len(entropy.pack(enc.payload)) / delta.numel()
        err = float((back - delta).norm() / delta.norm())
        print(
            json.dumps(
                {"codec": name, "bits_per_value": round(bits, 3), "rel_error": round(err, 3)}
            )
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pretrain", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--probe", action="store_true")
    ap.add_argument("--arms", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    init, start = pretrained(args.pretrain, 200)
    if args.probe:
        probe(init)
    local.get_codec = study_codec  # type: ignore[assignment]  # the sim's encoders
    for spec in filter(None, args.arms.split(";")):
        _, o = parse_arm(spec)
        rounds = args.steps // o["H"]
        res = local.simulate_diloco_inprocess(
            4, rounds, o["H"], corpus=stdlib_corpus(), batch_size=o["bs"], inner_lr=o["lr"],
            outer_lr=o["olr"], outer_momentum=o["mom"], outer_nesterov=o["mom"] > 0,
            codec=o["codec"], init=init, eval_batches=200, seed=o["seed"],
            result_feedback=bool(o["rfb"]),
        )  # fmt: skip
        bits = 8 * res.bytes_sent / (res.bytes_fp32 / 4)
        print(json.dumps({"arm": spec, "start": round(start, 4), "loss": round(res.final_loss, 4),
                          "bits_per_value": round(bits, 3), "rounds": rounds}))  # fmt: skip


if __name__ == "__main__":
    main()
