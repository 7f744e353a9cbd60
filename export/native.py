"""Living with the native libraries the exporter loads: TensorFlow, triton, TFLM.

    tf = import_tensorflow()          # safe import order, TensorFlow's C++ logging silenced
    schema = tflite_schema()          # TFLite's flatbuffer schema (object API), the same way
    with captured_stderr() as read:   # TFLM and the TFLite converter print on fd 2
        ...
        text = read()
"""
import contextlib
import functools
import os
import tempfile


def import_tensorflow():
    """Import TensorFlow after torch's compiler stack: loading triton (imported lazily by
    torch.export) once TensorFlow's libraries are loaded crashes the process."""
    import torch._dynamo  # noqa: F401  (pulls in triton first)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # info/warning lines on every import
    with captured_stderr():
        import tensorflow as tf
    return tf


@functools.cache  # callers ask per tensor; the import runs once
def tflite_schema():
    """TFLite's flatbuffer schema module (ModelT, BuiltinOperator, TensorType, ...), imported
    through `import_tensorflow` because it loads the tensorflow package."""
    import_tensorflow()
    from tensorflow.lite.python import schema_py_generated
    return schema_py_generated


@functools.cache
def tflite_flatbuffer_utils():
    """TFLite's reader and writer of the schema's object API (bytes <-> ModelT)."""
    import_tensorflow()
    from tensorflow.lite.tools import flatbuffer_utils
    return flatbuffer_utils


@contextlib.contextmanager
def captured_stderr():
    """Redirect file descriptor 2 (where C++ code prints) to a temporary file; yields a function
    returning what was written so far."""
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: (sink.seek(0), sink.read().decode(errors="replace"))[1]
        finally:
            os.dup2(saved, 2)
            os.close(saved)
