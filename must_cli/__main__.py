"""`python -m must_cli ...`, which is also what torchrun launches for multi-GPU runs."""

from must_cli.cli import run

run()
