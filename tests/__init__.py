"""cvkeras tests: tests/cvkeras, tests/export and tests/serving mirror the three folders; tests/support is shared."""
