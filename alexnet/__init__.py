"""alexnet: the 2012 AlexNet paper (Krizhevsky, Sutskever & Hinton) reproduced faithfully.

The paper's two-tower net, its training recipe and its test protocol, with the tooling of a modern
PyTorch library. See README.md for the commands; the paper is cited as "paper §N" (its sections;
docs/paper.md is the project's account of it).

Python API (the same steps as the commands):

    import alexnet
    net = alexnet.load("run/checkpoints/best.pt")   # a checkpoint, run directory, .safetensors, an import
    net.predict("cat.jpg")                          # [Prediction(path, predictions=[ClassScore(class_id,
                                                    #   name, index, prob), ...top 5], error=None)]
    net.predict(["a.jpg", "b.png"], topk=3, crops=10, batch_size=16)   # streamed batch by batch
    net.features(images)                            # fc7 after its ReLU: float32 (N, 4096)
    net(batch)                                      # logits of a normalised (N, 3, crop, crop) batch
    net.transforms(pil_image)                       # an image -> the net's input, exactly as predict does

    model = alexnet.build_model("alexnet")          # or alexnet.AlexNet(variant="paper", ...)
    alexnet.summarize("alexnet")                    # per-layer shapes, parameters, multiply-adds
    alexnet.train("data/prepared", "run", alexnet.TrainConfig())
    alexnet.evaluate(["run"], "data/prepared", crops=10)   # the paper's 10-crop test protocol
    alexnet.features("run", "data/prepared", "val", "feats.npz")   # fc7 features of a split, to a file
    alexnet.probe("run", "data/prepared", layer="fc7")   # a linear probe on a layer's frozen features

A run directory means its checkpoints/best.pt (else last.pt), as in every command. Mistakes raise
UserError (a ValueError), UsageError (a bad argument) or NotFoundError (a FileNotFoundError).

Images for `predict` and `features`: file paths, PIL images, numpy uint8 (H, W, 3) RGB arrays,
tensors (3, H, W), or a list of them; each net applies its own preprocessing (alexnet.artifact).
"""

import importlib

from alexnet.errors import NotFoundError, UsageError, UserError

__version__ = "0.1.0"

# Public names -> (module, attribute). Imported on first use, so that `import alexnet` (and the CLI's
# start-up) does not pay for torch and the rest until something is asked for. No module of the
# package bears a public function's name (the training loop is alexnet/training/loop.py, the test
# protocol alexnet/evaluation.py, the probe alexnet/linear_probe.py): importing one never replaces
# alexnet.train, alexnet.evaluate or alexnet.probe.
_LAZY = {
    "AlexNet": ("alexnet.model", "AlexNet"),
    "build_model": ("alexnet.model", "build_model"),
    "TrainConfig": ("alexnet.training.config", "TrainConfig"),
    "summarize": ("alexnet.summary", "summarize"),
    "load": ("alexnet.pretrained", "load"),
    "TrainedNet": ("alexnet.artifact", "TrainedNet"),
    "Prediction": ("alexnet.transforms", "Prediction"),
    "Transforms": ("alexnet.transforms", "Transforms"),
    "transforms_for": ("alexnet.artifact", "transforms_for"),
    "train": ("alexnet.training.loop", "train"),
    "evaluate": ("alexnet.evaluation", "evaluate_checkpoints"),
    "features": ("alexnet.predict", "features_of_split"),
    "probe": ("alexnet.linear_probe", "probe"),
}

__all__ = ["NotFoundError", "UsageError", "UserError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'alexnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
