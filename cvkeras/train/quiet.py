"""Keep the console to cvkeras' own lines: TensorFlow's start-up chatter is dropped unless ``--verbose``.

TensorFlow's C++ side prints absl/CUDA lines on stderr while it loads (``cudart_stub ... Could not find
cuda drivers``, ``failed call to cuInit``) even on machines where nothing is wrong; users read them as
failures. ``quiet_tensorflow`` raises the C++ log threshold to errors-that-raise-anyway and imports
TensorFlow with stderr captured, passing on every line that is not known start-up noise.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

#: Start-up lines TensorFlow/absl/CUDA print on every run; anything else is passed through.
NOISE = re.compile(
    r"absl::InitializeLog|cudart_stub|cuInit|Unable to register cu(DNN|FFT|BLAS) factory|computation_placer"
    r"|oneDNN custom operations|TF-TRT Warning|This TensorFlow binary is optimized|rebuild TensorFlow with"
    r"|cuda_(platform|executor|diagnostics|dnn|blas|fft)|^[IWE]\d{4} \d\d:\d\d:\d\d")


def verbose() -> bool:
    """``--verbose`` (sets CVKERAS_VERBOSE=1) shows TensorFlow's own log lines."""
    return os.environ.get("CVKERAS_VERBOSE", "") not in ("", "0")


def quiet_tensorflow() -> None:
    """Import TensorFlow and Keras with their start-up noise filtered out (no-op when verbose or loaded)."""
    if verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if line.strip() and not NOISE.search(line):
                    print(line, file=sys.stderr)
