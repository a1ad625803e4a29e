"""The ledger hook is told only the members whose update is in the average: a peer the
all-reduce left out (here: a NaN update) is not credited for the round. Three real
nodes in one process, with a recording RoundLedger in place of the chain."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

import shoal
from shoal.averaging.allreduce import AllReduce
from shoal.diloco import DiLoCo
from shoal.runtime.background import NodeThread
from shoal.wire.contact import Contact
from tests.peer_threads import run_peers

Buffer = memoryview | bytes | bytearray

BATCH = 8
STEPS = 4


class Members:
    """Records who the hook would credit each round."""

    def __init__(self) -> None:
        self.credited: dict[int, set[str]] = {}

    def commit_update(self, round_no: int, delta: bytes, samples: int) -> None:
        return None

    def anchor_round(self, round_no: int, model_hash: str, members: Sequence[Contact]) -> None:
        self.credited[round_no] = {str(m.peer_id) for m in members}


@pytest.mark.slow
def test_peer_left_out_of_the_average_is_not_credited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    nodes: list[NodeThread] = []
    try:
        for name in "abc":
            boot = [str(nodes[0].node.contact)] if nodes and nodes[0].node else []
            target = 3 * STEPS * BATCH
            nodes.append(shoal.start_node(tmp_path / name, run="credit", deadline_s=20,
                                          target_samples=target, bootstrap=boot))  # fmt: skip
        ids = [str(n.node.peer_id) for n in nodes if n.node is not None]
        hooks = [Members() for _ in nodes]
        models = [torch.nn.Linear(4, 1) for _ in nodes]
        for m in models[1:]:
            m.load_state_dict(models[0].state_dict())
        opts = [
            DiLoCo(m, torch.optim.SGD(m.parameters(), lr=0.01), run="credit", node=n,
                   inner_steps=STEPS, compression="none", join_existing=False, ledger=h)
            for m, n, h in zip(models, nodes, hooks, strict=True)
        ]  # fmt: skip
        # c's contributions to the other owners' shards carry a NaN (its own checks
        # refuse a NaN update, so it lies at the wire step, as tests/averaging does)
        honest = AllReduce.contribution

        async def lying(self: AllReduce, owner: int) -> tuple[str, list[Buffer]]:
            tag, body = await honest(self, owner)
            if str(self._group[self._idx].peer_id) != ids[2] or owner == self._idx:
                return tag, body
            x = torch.frombuffer(bytearray(memoryview(body[0]).cast("B")), dtype=torch.float32)
            x[0] = float("nan")
            return tag, [x.numpy().tobytes()]

        monkeypatch.setattr(AllReduce, "contribution", lying)

        def train(i: int) -> None:
            g = torch.Generator().manual_seed(i)
            for _ in range(STEPS):
                x = torch.randn(BATCH, 4, generator=g)
                loss = torch.nn.functional.mse_loss(models[i](x), x.sum(1, keepdim=True))
                opts[i].zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opts[i].step(samples=BATCH)

        run_peers(3, train, timeout_s=120)
        # Whichever groups formed (under load a peer may average alone), every honest
        # peer credits exactly its group minus those the all-reduce left out, and in at
        # least one group the all-reduce did leave c out.
        left_out_c = 0
        for opt, hook in zip(opts[:2], hooks[:2], strict=True):
            for r in opt.history:
                excluded = {i for i in ids if i[:12] in r.excluded}
                assert len(hook.credited[r.round - 1]) == r.group_size - len(excluded)
                assert not excluded & hook.credited[r.round - 1], (r, hook.credited)
                left_out_c += ids[2] in excluded
        assert left_out_c >= 1, [o.history for o in opts]
    finally:
        for n in nodes:
            n.stop()
