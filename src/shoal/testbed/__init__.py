"""A Linux WAN testbed: network namespaces on a bridge, shaped and delayed links,
nftables loss and partitions. Driven by ``shoal testnet``; see docs/TESTBED.md."""
