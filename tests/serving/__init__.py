"""Tests of serving/ (cvkeras.serving): the device side."""
