"""One entry function per command (adapt, predict, eval, export, verify, report, init, doctor): a module each, or
a package of a few for adapt, report and verify. Each returns a result and raises MustError, never prints.
Imports every layer below; predict, eval and export nothing from training.

Layers, bottom to top: base, files, method, training, commands, then cli.py (docs/architecture.md)."""
