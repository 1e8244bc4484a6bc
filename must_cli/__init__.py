"""must-cli: label-free adaptation of CLIP classifiers with MUST (Masked Unsupervised Self-Training)."""

__version__ = "0.1.0"
