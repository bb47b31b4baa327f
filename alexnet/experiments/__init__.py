"""The paper's claims as runnable, reproducible experiments (docs/experiments.md).

    run_relu_vs_tanh(data=None, out=..., config=ReluTanhConfig(...))   Figure 1 (§3.1)
    run_ablations(data, out=..., config=AblationConfig(...))            LRN, pooling, PCA, dropout (§3.3-4.2)

Each writes OUT/result.json and a PNG plot and returns the same dict.
"""

from alexnet.experiments.ablations import ABLATIONS, AblationConfig, run_ablations
from alexnet.experiments.relu_tanh import ReluTanhConfig, run_relu_vs_tanh

__all__ = ["ABLATIONS", "AblationConfig", "ReluTanhConfig", "run_ablations", "run_relu_vs_tanh"]
