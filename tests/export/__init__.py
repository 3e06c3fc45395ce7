"""Tests of export/ (cvkeras.export)."""
