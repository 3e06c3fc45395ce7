"""The run directory and the configuration it records: one type reads and writes a run."""
