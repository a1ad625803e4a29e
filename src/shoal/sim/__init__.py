"""Deterministic simulator: virtual time, a seeded RNG and a simulated network
driving the same sans-IO cores as the asyncio runtime."""
