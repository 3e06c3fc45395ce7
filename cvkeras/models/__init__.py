"""Backbones: the registry of Keras Applications, the classifier built on them, their costs."""
