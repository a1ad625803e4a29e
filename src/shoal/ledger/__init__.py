"""The ledger: signed per-peer feeds (off-chain) and round anchors (on-chain).

Off-chain: ``entry`` (the signed, hash-chained record), ``payloads`` (what each kind
holds), ``feed`` (SQLite, WAL + fsync), ``equivocation`` (portable proofs),
``replication`` (sans-IO gossip/pull core) with ``messages`` and ``gossip`` (its
driver on a node), ``merkle`` (root of a round's feed heads).
On-chain: ``artifacts`` (cached Vyper builds), ``chain`` (the ``Ledger`` interface
over web3), ``backends`` (embedded dev chain or JSON-RPC), ``devchain`` and
``rpc_server`` (the dev chain and ``shoal chain``).
Together: ``run_ledger`` (one peer's rules per round), ``training_hook`` (DiLoCo's
hook), ``verify`` (``shoal verify``), ``demo_setup`` (``shoal demo``).

Importing this package imports nothing heavy; web3 loads only with the chain modules.
"""
