"""Helpers shared by the tests: real databases, real servers, credentials,
polling, server processes and /metrics scraping. Test modules import from
here, never from ``conftest`` (which only registers fixtures)."""
