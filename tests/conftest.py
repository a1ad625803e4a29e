"""Fixtures every test folder may use."""

from tests.process_helpers import procs as procs  # re-exported: pytest finds fixtures here
