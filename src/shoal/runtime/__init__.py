"""The asyncio runtime: real sockets and real time driving the sans-IO cores."""
