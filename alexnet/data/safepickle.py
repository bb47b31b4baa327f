"""Reading pickled data files (CIFAR-10's python batches) without running anything in them.

`pickle.load` calls whatever callable a file names, so a crafted "dataset" runs code. This
unpickler admits only what a data file needs: the builtin containers, bytes, str and numbers (no
globals at all), and numpy arrays (numpy's reconstruction function, ndarray and dtype, as numpy
pickles them). Any other global is refused with `RefusedPickle` before anything is called.
"""

from __future__ import annotations

import pickle

import numpy as np

try:
    from numpy._core import multiarray as np_multiarray  # numpy 2
except ImportError:  # numpy 1
    from numpy.core import multiarray as np_multiarray

# The only globals a CIFAR-10 python batch refers to: numpy's array reconstruction (its module is
# numpy.core in the real files, numpy._core in files numpy 2 writes). Nothing else is ever loaded
# from a data file: a pickle naming any other callable (os.system, builtins.eval...) is refused
# before it runs.
_CIFAR_GLOBALS = {
    (module, name): obj
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name, obj in (("_reconstruct", np_multiarray._reconstruct), ("scalar", np_multiarray.scalar))
} | {
    (module, name): obj
    for module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray")
    for name, obj in (("ndarray", np.ndarray), ("dtype", np.dtype))
}


class RefusedPickle(pickle.UnpicklingError):
    """A data file that names code to run: never loaded, never skipped quietly."""


class _DataUnpickler(pickle.Unpickler):
    """pickle for data files: builtin containers, bytes, str and numbers, and numpy arrays only."""

    def find_class(self, module: str, name: str):
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedPickle(f"{module}.{name}") from None


def load_data_pickle(path: str):
    """The object pickled in `path` (Python 2 strings as bytes); RefusedPickle if it names code."""
    with open(path, "rb") as f:
        return _DataUnpickler(f, encoding="bytes").load()
