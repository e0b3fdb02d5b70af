"""Test helpers as modules, laid out by what they talk to; the fixtures that use them are in conftest.py."""
