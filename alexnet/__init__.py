"""alexnet: the 2012 AlexNet paper (Krizhevsky, Sutskever & Hinton) reproduced faithfully.

The paper's two-tower net, its training recipe and its test protocol, with the tooling of a modern
PyTorch library. See README.md for the commands; PAPER facts are cited as "paper §N".
"""

__version__ = "0.1.0"

from alexnet.errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__"]
