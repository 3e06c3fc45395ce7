"""Tests of the training side and the app (cvkeras/)."""
