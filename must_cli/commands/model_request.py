"""What `must eval` and `must predict` share: which model to run on which images, and how.

Kept apart from both commands (and from torch) so each field and the zero-shot option rules
are written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from must_cli.base.config import AUTO_DEVICE, AUTO_WORKERS, INFERENCE_BATCH
from must_cli.base.errors import MustError


@dataclass(frozen=True)
class ModelRequest:
    """An adapted model file, or plain CLIP built from an open_clip spec and class names (zero_shot), on a folder."""

    images: Path
    model: str | None = None  # run folder / .safetensors (default: the newest run); with zero_shot an open_clip spec
    zero_shot: bool = False
    classes: Path | None = None  # zero_shot only: an adapted model carries its own class names
    pretrained: str | None = None  # zero_shot only
    templates: Path | None = None  # zero_shot only
    batch_size: int = INFERENCE_BATCH
    workers: int = AUTO_WORKERS
    device: str = AUTO_DEVICE

    def check_zero_shot_options(self) -> None:
        """--zero-shot needs --classes; --classes, --templates and --pretrained need --zero-shot."""
        if self.zero_shot and self.classes is None:
            raise MustError("--zero-shot needs --classes FILE (one class name per line)")
        if not self.zero_shot and (self.classes or self.templates or self.pretrained):
            raise MustError("--classes, --templates and --pretrained only apply with --zero-shot: "
                            "an adapted model carries its own class names")
