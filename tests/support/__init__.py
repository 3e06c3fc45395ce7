"""Shared test code: the CLI helper and tiny-run flags, tiny models and data sets made by the tests themselves."""
