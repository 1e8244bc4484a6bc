"""The foundation every layer uses: errors, the typed config and its presets, progress reporting, the device and
precision runtime, torch.distributed, stop requests. Imports nothing else from must_cli.

Layers, bottom to top: base, files, method, training, commands, then cli.py (docs/architecture.md)."""
