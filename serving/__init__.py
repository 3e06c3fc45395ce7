"""Device side of cvkeras: numpy, Pillow and onnxruntime only -- never TensorFlow."""
