"""A throwaway Docker daemon in its own network namespace, for the image test.

dockerd is started with ``nsenter --net=/run/netns/NAME`` (``ip netns exec`` would
also remount /sys and hide the cgroup mounts dockerd needs). Its bridge, iptables
rules and containers live only in that namespace, its data root in a temp dir;
``close`` removes all of it. No registry is reachable, so the base image is a
debootstrap rootfs (cached between runs, like the wheels) imported with
``docker import``, and the image is built offline from those wheels.

Every step that cannot run here raises ``Unavailable`` with the exact reason, which
the test turns into a skip.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOCKER = "/usr/bin/docker"  # Debian's docker.io client, not whatever is first on PATH
DOCKERD = "/usr/sbin/dockerd"
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
BASE_TAG = "shoal-base:bookworm"
IMAGE_TAG = "shoal:cpu"
# Cached between runs (the rootfs takes ~1 min to debootstrap, the wheels ~200 MiB).
CACHE = Path(os.environ.get("SHOAL_DEPLOY_CACHE", "/var/cache/shoal-deploy-test"))
RUNTIME_WHEELS = (
    "torch==2.13.0", "cryptography>=42", "msgpack>=1.0", "typer>=0.12", "rich>=13",
    "psutil>=5.9", "safetensors>=0.4", "numpy>=1.26", "setuptools>=68", "wheel",
)  # fmt: skip
DAEMON_START_S = 60.0
# The data root's loop file: base + build stages + image + containers need ~5 GiB.
DATA_IMAGE_BYTES = 16 * 2**30
DEBOOTSTRAP_S = 600.0
BUILD_S = 900.0


class Unavailable(Exception):
    """Docker cannot run here; the message says exactly why."""


def _run(
    cmd: list[str], timeout: float = 120.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _tail(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


class DockerInNetns:
    def __init__(self) -> None:
        self.name = f"shoal-dk-{os.getpid()}-{secrets.token_hex(3)}"
        self.root = Path(tempfile.mkdtemp(prefix="shoal-docker-"))
        self.sock = self.root / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.sock}", "DOCKER_BUILDKIT": "0"}
        self.proc: subprocess.Popen[bytes] | None = None
        self.netns = False

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        if os.geteuid() != 0:
            raise Unavailable("not root: dockerd and network namespaces need root")
        for tool in (DOCKERD, DOCKER):
            if not Path(tool).exists():
                raise Unavailable(f"{tool} missing: apt-get install docker.io (make test does)")
        for tool in ("ip", "nsenter", "debootstrap"):
            if shutil.which(tool) is None:
                raise Unavailable(f"{tool} not found (apt-get install iproute2 util-linux "
                                  "debootstrap)")  # fmt: skip
        r = _run(["ip", "netns", "add", self.name])
        if r.returncode:
            raise Unavailable(f"ip netns add failed: {r.stderr.strip()}")
        self.netns = True
        _run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        self._loop_mount_data()
        log = open(self.root / "dockerd.log", "wb")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                "nsenter", f"--net=/run/netns/{self.name}", DOCKERD,
                "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "dockerd.pid"),
                "--host", f"unix://{self.sock}",
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + DAEMON_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.sock.exists() and self.docker("info", timeout=20).returncode == 0:
                return
            time.sleep(0.5)
        reason = _tail((self.root / "dockerd.log").read_text(errors="replace"))
        raise Unavailable(f"dockerd did not start (exit {self.proc.poll()}):\n{reason}")

    def _loop_mount_data(self) -> None:
        """Put the data root on its own loop-mounted ext4 file when the kernel allows.

        Teardown is then an unmount and one unlink instead of deleting the tens of
        thousands of files in torch's layers one by one (minutes on a busy disk).
        Without loop devices the data root is a plain directory.
        """
        data = self.root / "data"
        data.mkdir()
        img = self.root / "data.img"
        with open(img, "wb") as f:
            f.truncate(DATA_IMAGE_BYTES)  # sparse: only what is written takes space
        made = _run(["mkfs.ext4", "-q", "-F", "-m", "0", str(img)], timeout=120)
        if (
            made.returncode == 0
            and _run(["mount", "-o", "loop", str(img), str(data)]).returncode == 0
        ):
            return
        img.unlink()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            ids = self.docker("ps", "-aq", timeout=30).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, timeout=120)
            self.proc.send_signal(signal.SIGTERM)  # by its own PID; it stops its containerd
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        # dockerd unmounts its layers on exit; anything left would block the rm.
        mounts = [
            line.split()[1]
            for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(self.root))
        ]
        for m in sorted(mounts, key=len, reverse=True):
            _run(["umount", "-l", m])
        shutil.rmtree(self.root, ignore_errors=True)
        if self.netns:
            _run(["ip", "netns", "del", self.name])
            self.netns = False

    def docker(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return _run([DOCKER, *args], timeout=timeout, env=self.env)

    def check(self, *args: str, timeout: float = 120.0) -> str:
        r = self.docker(*args, timeout=timeout)
        if r.returncode:
            raise AssertionError(f"docker {' '.join(args)} failed:\n{_tail(r.stdout + r.stderr)}")
        return r.stdout

    # -- images --------------------------------------------------------------------
    def import_base(self) -> None:
        """``shoal-base:bookworm`` from a (cached) debootstrap rootfs."""
        key = hashlib.sha256(f"{SUITE} {MIRROR} {BASE_PACKAGES}".encode()).hexdigest()[:12]
        tarball = CACHE / f"rootfs-{SUITE}-{key}.tar"
        if not tarball.exists():
            self._debootstrap(tarball)
        with open(tarball, "rb") as f:
            r = subprocess.run(
                [DOCKER, "import", "-c", "ENV LANG=C.UTF-8", "-", BASE_TAG],
                stdin=f, capture_output=True, text=True, env=self.env, timeout=300, check=False,
            )  # fmt: skip
        if r.returncode:
            raise AssertionError(f"docker import failed: {r.stderr}")

    def _debootstrap(self, tarball: Path) -> None:
        CACHE.mkdir(parents=True, exist_ok=True)
        rootfs = Path(tempfile.mkdtemp(prefix="shoal-rootfs-", dir=CACHE))
        try:
            r = _run(
                ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE,
                 str(rootfs), MIRROR],
                timeout=DEBOOTSTRAP_S,
            )  # fmt: skip
            if r.returncode:
                raise Unavailable(
                    f"debootstrap from {MIRROR} failed:\n{_tail(r.stdout + r.stderr)}"
                )
            # What an image does not need: package caches, docs, man pages, locales.
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc",
                         "usr/share/man", "usr/share/locale"):  # fmt: skip
                for p in (rootfs / junk).glob("*"):
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
            tmp = tarball.with_suffix(".tmp")
            r = _run(["tar", "-C", str(rootfs), "-cf", str(tmp), "."], timeout=300)
            if r.returncode:
                raise AssertionError(f"tar failed: {r.stderr}")
            tmp.replace(tarball)
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)

    def wheelhouse(self) -> Path:
        """Every runtime wheel, fetched with the host's pip (and its mirrors) once."""
        wheels = CACHE / "wheelhouse"
        stamp = wheels / (hashlib.sha256(" ".join(RUNTIME_WHEELS).encode()).hexdigest()[:12])
        if stamp.exists():
            return wheels
        wheels.mkdir(parents=True, exist_ok=True)
        r = _run(
            [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
             "--dest", str(wheels), *RUNTIME_WHEELS],
            timeout=600,
        )  # fmt: skip
        if r.returncode:
            raise Unavailable(f"pip download of the image's wheels failed:\n{_tail(r.stderr)}")
        stamp.touch()
        return wheels

    def build_image(self, repo: Path) -> float:
        """Build deploy/docker/Dockerfile offline on the debootstrap base; seconds taken."""
        ctx = self.root / "context"
        (ctx / "deploy" / "docker").mkdir(parents=True)
        for name in ("pyproject.toml", "README.md", ".dockerignore"):
            shutil.copy(repo / name, ctx / name)
        shutil.copytree(repo / "src", ctx / "src", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("Dockerfile", "entrypoint.sh"):
            shutil.copy2(repo / "deploy" / "docker" / name, ctx / "deploy" / "docker" / name)
        shutil.copytree(self.wheelhouse(), ctx / "deploy" / "docker" / "wheelhouse")
        t0 = time.monotonic()
        self.check(
            "build", "-q", "-f", str(ctx / "deploy" / "docker" / "Dockerfile"),
            "--build-arg", f"BASE_IMAGE={BASE_TAG}", "--build-arg", "OFFLINE=1",
            "-t", IMAGE_TAG, str(ctx),
            timeout=BUILD_S,
        )  # fmt: skip
        shutil.rmtree(ctx, ignore_errors=True)
        return time.monotonic() - t0
