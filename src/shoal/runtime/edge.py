"""The edge profile: small devices at the periphery of the swarm (ARM boards, gateways).

An edge node caps its own memory, trains with small batches on one thread, and can
run inference-only (serving the latest verified model next to the data it sees,
see ``training/inference.py``). This module holds the parts that need no torch: the
profile's numbers, the address-space cap and reading the container's memory limit.

The cap is ``RLIMIT_AS``: a runaway allocation then fails inside this process with a
MemoryError the node can log, instead of the kernel's OOM killer picking a victim on a
device that also runs other things. The cgroup limit (set by Docker or Kubernetes),
when there is one, is only read and logged: it counts resident memory, the rlimit
counts address space, and both apply.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# torch's CPU build maps ~640 MiB of address space on import and a training node
# adds ~100 MiB for the tiny model; 1 GiB leaves headroom for batches of 4.
EDGE_MEMORY_MB = 1024
# Batch size on an edge device; activations grow with it, and ARM boards have 1-4 GiB.
EDGE_MAX_BATCH = 4
# One intra-op thread: edge boards have few cores and also run their main workload.
EDGE_THREADS = 1
# Below this torch cannot even import; a smaller cap is a typo, not a choice.
MIN_MEMORY_MB = 256

CGROUP_LIMIT_FILES = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)
# cgroup v1 reports "no limit" as a huge page-rounded number; above this it is none.
CGROUP_UNLIMITED = 2**60


class ProfileError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class EdgeProfile:
    memory_mb: int = EDGE_MEMORY_MB
    max_batch: int = EDGE_MAX_BATCH
    threads: int = EDGE_THREADS

    def __post_init__(self) -> None:
        if self.memory_mb < MIN_MEMORY_MB:
            raise ProfileError(f"memory cap {self.memory_mb} MiB is below {MIN_MEMORY_MB} MiB")
        if self.max_batch < 1 or self.threads < 1:
            raise ProfileError("max_batch and threads must be >= 1")


def cap_memory(limit_bytes: int) -> int:
    """Lower this process's address-space limit to ``limit_bytes``; returns the limit set.

    Never raises the limit: a stricter hard limit set by the operator wins.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    new = limit_bytes if hard == resource.RLIM_INFINITY else min(limit_bytes, hard)
    if soft != resource.RLIM_INFINITY:
        new = min(new, soft)
    resource.setrlimit(resource.RLIMIT_AS, (new, hard))
    return new


def cgroup_memory_limit(files: tuple[Path, ...] = CGROUP_LIMIT_FILES) -> int | None:
    """The container's memory limit in bytes, or None when there is none."""
    for f in files:
        try:
            raw = f.read_text().strip()
        except OSError:
            continue
        if raw == "max":
            return None
        try:
            value = int(raw)
        except ValueError:
            continue
        return None if value >= CGROUP_UNLIMITED else value
    return None


def address_space_bytes() -> int | None:
    """This process's mapped address space (VmSize), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def apply_edge(profile: EdgeProfile) -> int:
    """Apply the process-wide parts of the profile (the memory cap); returns it in bytes."""
    limit = cap_memory(profile.memory_mb * 2**20)
    cg = cgroup_memory_limit()
    log.info(
        "edge profile: address space capped at %d MiB (cgroup limit: %s), batch <= %d",
        limit // 2**20,
        f"{cg // 2**20} MiB" if cg is not None else "none",
        profile.max_batch,
    )
    return limit
