"""The node firewall: rendered text, bad input, and the ruleset applied inside a
testbed host (allowed traffic passes, everything else is dropped)."""

from __future__ import annotations

import subprocess

import pytest

from shoal.firewall.render import FirewallError, render_ruleset
from shoal.testbed import applier
from tests.testbed.conftest import SHOAL, Factory, run_in


def test_render_allows_p2p_and_metrics_cidr_only() -> None:
    text = render_ruleset(7000, "10.1.0.0/16", 9100)
    assert "policy drop;" in text
    assert "tcp dport 7000 accept" in text
    assert "ip saddr 10.1.0.0/16 tcp dport 9100 accept" in text
    assert "ip6 saddr 2001:db8::/32 tcp dport 9100" in render_ruleset(7000, "2001:db8::/32")
    assert "flush ruleset" not in text  # only its own table is replaced


@pytest.mark.parametrize(
    ("p2p", "cidr", "metrics", "msg"),
    [
        (0, "10.0.0.0/8", 9100, "p2p port"),
        (70000, "10.0.0.0/8", 9100, "p2p port"),
        (7000, "10.0.0.0/8", 0, "metrics port"),
        (7000, "10.0.0.0/8", 7000, "must differ"),
        (7000, "10.0.0/8", 9100, "CIDR"),
        (7000, "10.0.0.0/8; flush ruleset", 9100, "CIDR"),
        (7000, "", 9100, "CIDR"),
    ],
)
def test_render_rejects_bad_input(p2p: int, cidr: str, metrics: int, msg: str) -> None:
    with pytest.raises(FirewallError, match=msg):
        render_ruleset(p2p, cidr, metrics)


def test_cli_bad_cidr_is_a_clear_error() -> None:
    p = subprocess.run(
        [*SHOAL, "firewall", "render", "--p2p-port", "7000", "--metrics-from", "nope"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and "CIDR" in p.stderr and p.stdout == ""


# Listens on the P2P, metrics and one other port, and answers each connection.
LISTENER = """
import socket, selectors, sys
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[1:]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16); sel.register(s, selectors.EVENT_READ)
print("listening", flush=True)
while True:
    for key, _ in sel.select():
        c, _ = key.fileobj.accept(); c.sendall(b"hi"); c.close()
"""

# Prints "open" (got the greeting), "refused" or "dropped" (no answer at all).
PROBE = """
import socket, sys
s = socket.socket(); s.settimeout(2.0)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("open" if s.recv(2) == b"hi" else "?")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("dropped")
"""


@pytest.mark.testbed
def test_ruleset_applied_in_a_testbed_host(testnet: Factory) -> None:
    st = testnet(3, "lan")
    h0, h1 = st.hosts[0].addr, st.hosts[1].addr
    p2p, metrics, other = 7000, 9100, 8080
    listener = subprocess.Popen(
        [*SHOAL, "testnet", "exec", "h1", "--name", st.name, "--",
         "python3", "-c", LISTENER, str(p2p), str(metrics), str(other)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "listening"

        def probe(src: str, port: int) -> str:
            return run_in(st, src, "python3", "-c", PROBE, h1, str(port)).strip()

        # before: everything open from everywhere
        assert probe("h2", other) == "open"
        ruleset = render_ruleset(p2p, f"{h0}/32", metrics)
        applier.run(["ip", "netns", "exec", st.hosts[1].netns, "nft", "-f", "-"], stdin=ruleset)
        applier.run(["ip", "netns", "exec", st.hosts[1].netns, "nft", "-f", "-"], stdin=ruleset)
        assert probe("h0", p2p) == "open"
        assert probe("h2", p2p) == "open"
        assert probe("h0", metrics) == "open"  # h0 is in the metrics CIDR
        assert probe("h2", metrics) == "dropped"  # h2 is not
        assert probe("h0", other) == "dropped"
        assert probe("h2", other) == "dropped"
        assert probe("h0", 9999) == "dropped"  # closed ports do not even answer RST
        ping = subprocess.run(
            [*SHOAL, "testnet", "exec", "h0", "--name", st.name, "--",
             "ping", "-c", "2", "-W", "1", "-q", h1],
            capture_output=True, text=True,
        )  # fmt: skip
        assert " 0 received" in ping.stdout
        # the testbed's own rules survive: h1's partition table is untouched
        tables = run_in(st, "h1", "nft", "list", "tables")
        assert "shoal_testnet" in tables and "shoal_node" in tables
    finally:
        listener.kill()
        listener.wait(timeout=10)
