"""A training run: the one builder of model, masks, EMA teacher and optimiser, and the epoch loop with
checkpoints and resume. Imports base, files and method.

Layers, bottom to top: base, files, method, training, commands, then cli.py (docs/architecture.md)."""
