"""Training, stage by stage: `config.py` (the config and its one resolution) -> `plan.py` (a run set
up once) -> `loop.py` (epochs, steps, validation, saving), with `step.py` (the training step),
`optim.py` and `lars.py` (the updates), `health.py` (NaN, stall, divergence), `state.py` (what a
checkpoint holds, and resuming), `finetune.py` (starting from trained weights) and `rundir.py` (the
run directory). docs/architecture.md follows one step through them."""
