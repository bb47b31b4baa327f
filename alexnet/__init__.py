"""alexnet: the 2012 AlexNet paper (Krizhevsky, Sutskever & Hinton) reproduced faithfully.

The paper's two-tower net, its training recipe and its test protocol, with the tooling of a modern
PyTorch library. See README.md for the commands; the paper is cited as "paper §N" (its sections;
docs/paper.md is the project's account of it).
"""

from alexnet.errors import UserError

__version__ = "0.1.0"

__all__ = ["UserError", "__version__"]
