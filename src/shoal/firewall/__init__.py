"""A node's host firewall plan (nftables), rendered for operators to apply."""
