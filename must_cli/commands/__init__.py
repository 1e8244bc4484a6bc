"""One module per command (adapt, predict, eval, export, verify, report, init, doctor): each returns a result
and raises MustError, never prints. Imports every layer below; predict, eval and export nothing from training.

Layers, bottom to top: base, files, method, training, commands, then cli.py (docs/architecture.md)."""
