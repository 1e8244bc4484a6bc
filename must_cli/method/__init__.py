"""The method: the MUST model, its losses, masks and views, one training step and epoch, class priors,
inference, the guard and the shipped model file. Imports base and files.

Layers, bottom to top: base, files, method, training, commands, then cli.py (docs/architecture.md)."""
