"""Read one CIFAR-10 python batch file without running anything it names.

The official `cifar-10-batches-py` files are pickles of a dict {b"batch_label": bytes,
b"labels": [int], b"data": uint8 array (10000, 3072), b"filenames": [bytes]}. A pickle can name
any importable callable and call it, so `pickle.load` on a file from elsewhere runs whatever the
file says. This reader resolves only the three names a pickled numpy array needs and maps them
to inert stand-ins (nothing in numpy is called while unpickling), then builds the array itself
from the raw bytes and checks every key, shape and value.

    data, labels = read_batch(Path("cifar-10-batches-py/test_batch"))   # (10000, 3072) uint8, (10000,) int64
"""
import io
import pickle
from pathlib import Path

import numpy as np

ROWS = 10000        # images per batch file
ROW_BYTES = 3072    # 32 x 32 x 3, channel-planar
NUM_CLASSES = 10
_KEYS = {b"batch_label", b"labels", b"data", b"filenames"}


class CifarFormatError(ValueError):
    """The file is not a CIFAR-10 python batch (or asks to run code)."""


class _ArrayStub:
    """What numpy's `_reconstruct(ndarray, shape, typecode)` would build; the pickle's BUILD
    step then hands it numpy's array state (version, shape, dtype, fortran order, raw bytes)."""

    def __init__(self, *args):
        self.state = None

    def __setstate__(self, state):
        self.state = state


class _DtypeStub:
    """What `numpy.dtype(name, align, copy)` would build; BUILD hands it the byte-order state."""

    def __init__(self, name, *args):
        self.name, self.state = name, None

    def __setstate__(self, state):
        self.state = state


class _NdarrayName:
    """Stands for `numpy.ndarray`, which the pickle only passes to `_reconstruct`."""


# The only globals the official files reference (`pickletools.dis`), under numpy 1 and 2 names.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _ArrayStub,
    ("numpy._core.multiarray", "_reconstruct"): _ArrayStub,
    ("numpy", "ndarray"): _NdarrayName,
    ("numpy", "dtype"): _DtypeStub,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise CifarFormatError(f"it names {module}.{name}, which a CIFAR-10 batch never holds "
                                   "(refused: unpickling it would run code)") from None

    def persistent_load(self, pid):
        raise CifarFormatError("it holds a persistent reference, which a CIFAR-10 batch never holds")


def _uint8_array(value) -> np.ndarray:
    """The (ROWS, ROW_BYTES) uint8 array a stub describes, built from its raw bytes."""
    if not isinstance(value, _ArrayStub) or not isinstance(value.state, tuple) or len(value.state) != 5:
        raise CifarFormatError("its data is not a pickled numpy array")
    _, shape, dtype, fortran, raw = value.state
    if not isinstance(dtype, _DtypeStub) or dtype.name not in ("u1", b"u1"):
        raise CifarFormatError("its data is not uint8")
    if tuple(shape) != (ROWS, ROW_BYTES) or fortran or not isinstance(raw, bytes) or len(raw) != ROWS * ROW_BYTES:
        raise CifarFormatError(f"its data is not a {ROWS}x{ROW_BYTES} C-ordered array")
    return np.frombuffer(raw, dtype=np.uint8).reshape(ROWS, ROW_BYTES)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8 (ROWS, ROW_BYTES), labels int64 (ROWS,)) of one batch file; CifarFormatError
    (one line, naming the file) for anything else."""
    try:
        batch = _Unpickler(io.BytesIO(Path(path).read_bytes()), encoding="bytes").load()
        if not isinstance(batch, dict) or set(batch) != _KEYS:
            raise CifarFormatError(f"it is not a dict with keys {sorted(k.decode() for k in _KEYS)}")
        data = _uint8_array(batch[b"data"])
        labels = batch[b"labels"]
        if (not isinstance(labels, list) or len(labels) != ROWS
                or not all(type(v) is int and 0 <= v < NUM_CLASSES for v in labels)):
            raise CifarFormatError(f"its labels are not {ROWS} integers in 0..{NUM_CLASSES - 1}")
        names = batch[b"filenames"]
        if not isinstance(names, list) or len(names) != ROWS or not isinstance(batch[b"batch_label"], bytes):
            raise CifarFormatError("its filenames or batch_label are malformed")
    except CifarFormatError as e:
        raise CifarFormatError(f"{path} is not a CIFAR-10 batch: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, RecursionError) as e:  # truncated or garbled pickle
        raise CifarFormatError(f"{path} is not a CIFAR-10 batch: unreadable pickle "
                               f"({type(e).__name__}: {str(e)[:120]})") from None
    return data, np.asarray(labels, dtype=np.int64)
