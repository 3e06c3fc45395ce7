"""Labelled images in: sources, the split, the tf.data pipeline and its augmentation, data health."""
