"""Serve the dev chain over Ethereum JSON-RPC on loopback (``shoal chain``).

Several node processes on one machine share one persisted dev chain this way. The
request and result formatting is web3.py's own eth-tester mapping (the same one an
in-process web3 applies), then every integer becomes a 0x quantity and every byte
string 0x hex, as the JSON-RPC spec wants. Requests run one at a time: py-evm is not
thread-safe, and the dev chain is a test tool, not a production node.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_tester.exceptions import TransactionFailed
from web3.providers.eth_tester.middleware import request_formatters, result_formatters
from web3.types import RPCEndpoint

from shoal.ledger.devchain import DevChain

log = logging.getLogger(__name__)

# A JSON-RPC request body: the largest shoal sends is a raw anchor tx (~17 KiB hex x2).
MAX_BODY_BYTES = 1024 * 1024
# A batch bigger than this is not something shoal's clients send.
MAX_BATCH = 100
ERROR_SELECTOR = bytes.fromhex("08c379a0")  # keccak("Error(string)")[:4]
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def to_json(v: Any) -> Any:
    """web3/eth-tester values -> JSON-RPC wire values."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return hex(v)
    if isinstance(v, bytes | bytearray):
        return "0x" + bytes(v).hex()
    if isinstance(v, dict):
        return {str(k): to_json(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [to_json(x) for x in v]
    return str(v)


def revert_error(exc: TransactionFailed) -> dict[str, Any]:
    """A revert as geth and Hardhat report it: code 3, data = ABI ``Error(string)``."""
    arg = exc.args[0] if exc.args else ""
    if isinstance(arg, bytes):
        return {"code": 3, "message": "execution reverted", "data": "0x" + arg.hex()}
    text = str(arg)
    reason = text.removeprefix("execution reverted: ").removeprefix("execution reverted")
    data = ERROR_SELECTOR + abi_encode(["string"], [reason])
    return {"code": 3, "message": text, "data": "0x" + data.hex()}


class ChainRpc:
    def __init__(self, chain: DevChain) -> None:
        self.chain = chain
        assert chain.ethereum_tester is not None
        self.default_from = str(chain.ethereum_tester.get_accounts()[0])

    def handle(self, req: Any) -> dict[str, Any]:
        rid = req.get("id") if isinstance(req, dict) else None
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            return {
                "jsonrpc": "2.0",
                "id": rid,
                "error": {"code": -32600, "message": "bad request"},
            }
        method = RPCEndpoint(req["method"])
        params = req.get("params") or []
        if method in ("eth_call", "eth_estimateGas") and params and isinstance(params[0], dict):
            # Nodes default a call's sender; eth-tester insists on a funded one.
            params = [{"from": self.default_from, **params[0]}, *params[1:]]
        try:
            fmt = request_formatters.get(method)
            if fmt is not None:
                params = fmt(params)
            resp = self.chain.make_request(method, params)
        except TransactionFailed as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": revert_error(exc)}
        except Exception as exc:  # eth-tester raises many types; all become RPC errors
            msg = str(exc) or type(exc).__name__
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32000, "message": msg}}
        if "error" in resp:
            err = resp["error"]
            if not isinstance(err, dict):
                err = {"code": -32000, "message": str(err)}
            return {"jsonrpc": "2.0", "id": rid, "error": to_json(err)}
        result = resp.get("result")
        fmt_out = (result_formatters or {}).get(method)
        if fmt_out is not None:
            result = fmt_out(result)
        return {"jsonrpc": "2.0", "id": rid, "result": to_json(result)}


def make_server(chain: DevChain, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    if host not in LOOPBACK:
        raise ValueError(f"the dev chain serves loopback only, not {host!r}")
    rpc = ChainRpc(chain)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            if not 0 < n <= MAX_BODY_BYTES:
                self.send_error(413 if n else 411)
                return
            try:
                req = json.loads(self.rfile.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                out: Any = {"jsonrpc": "2.0", "id": None,
                            "error": {"code": -32700, "message": "parse error"}}  # fmt: skip
            else:
                if isinstance(req, list):
                    out = [rpc.handle(r) for r in req[:MAX_BATCH]]
                else:
                    out = rpc.handle(req)
            body = json.dumps(out).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("rpc %s", format % args)

    return ThreadingHTTPServer((host, port), Handler)


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, name="devchain-rpc", daemon=True)
    t.start()
    return t
