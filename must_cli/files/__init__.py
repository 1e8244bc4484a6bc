"""Files and runs: reading images and class lists, atomic writes, the run folder and its record, training
checkpoints, both models' saved labels. Imports only base.

Layers, bottom to top: base, files, method, training, commands, then cli.py (docs/architecture.md)."""
