"""alexnet: the 2012 AlexNet paper (Krizhevsky, Sutskever & Hinton) reproduced faithfully.

The paper's two-tower net, its training recipe and its test protocol, with the tooling of a modern
PyTorch library. See README.md for the commands; the paper is cited as "paper §N" (its sections;
docs/paper.md is the project's account of it).

Python API (the same steps as the commands):

    import alexnet
    net = alexnet.load("run/checkpoints/best.pt")   # a checkpoint, run directory, .safetensors, an import
    net.predict("cat.jpg")                          # per image: top-5 class ids, names, probabilities
    net.predict(["a.jpg", "b.png"], topk=3, crops=10)
    net.features(images)                            # fc7 after its ReLU: float32 (N, 4096)

    model = alexnet.build_model("alexnet")          # or alexnet.AlexNet(variant="paper", ...)
    alexnet.summarize("alexnet")                    # per-layer shapes, parameters, multiply-adds
    alexnet.train("data/prepared", "run", alexnet.TrainConfig())
    alexnet.evaluate(["run"], "data/prepared", crops=10)   # the paper's 10-crop test protocol

Images for `predict` and `features`: file paths, PIL images, numpy uint8 (H, W, 3) RGB arrays,
tensors (3, H, W), or a list of them; each net applies its own preprocessing (alexnet.artifact).
"""

import importlib
import sys
import types

from alexnet.errors import UserError

__version__ = "0.1.0"

# Public names -> (module, attribute). Imported on first use, so that `import alexnet` (and the CLI's
# start-up) does not pay for torch and the rest until something is asked for.
_LAZY = {
    "AlexNet": ("alexnet.model", "AlexNet"),
    "build_model": ("alexnet.model", "build_model"),
    "TrainConfig": ("alexnet.train", "TrainConfig"),
    "summarize": ("alexnet.summary", "summarize"),
    "load": ("alexnet.artifact", "open_artifact"),
    "TrainedNet": ("alexnet.artifact", "TrainedNet"),
}
# `alexnet.train` and `alexnet.evaluate` are submodules, and Python sets a package's attribute to its
# submodule whenever one is imported, so they cannot also be plain functions. They are the modules,
# made callable: alexnet.train(...) is alexnet.train.train(...), alexnet.evaluate(...) is
# alexnet.evaluate.evaluate_checkpoints(...) (paths, prepared data, crops).
_CALLABLE_MODULES = {"train": "train", "evaluate": "evaluate_checkpoints"}

__all__ = ["UserError", "__version__", *_LAZY, *_CALLABLE_MODULES]


class _CallableModule(types.ModuleType):
    """A submodule that, called, runs its main function (see _CALLABLE_MODULES)."""

    def __call__(self, *args, **kwargs):
        return getattr(self, _CALLABLE_MODULES[self.__name__.rpartition(".")[2]])(*args, **kwargs)


class _Package(types.ModuleType):
    """This package's module type: makes the submodules named in _CALLABLE_MODULES callable the moment
    the import system attaches them here, whoever imports them first."""

    def __setattr__(self, name: str, value) -> None:
        if name in _CALLABLE_MODULES and type(value) is types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in _CALLABLE_MODULES:
        return importlib.import_module(f"alexnet.{name}")  # attached (callable) by _Package.__setattr__
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'alexnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
