"""cvkeras: fine-tune Keras Applications classifiers and ship them to edge devices.

Importing this package is cheap: TensorFlow is imported only by the modules that train.
"""

__version__ = "0.1.0"
