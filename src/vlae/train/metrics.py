"""The run's log: ``metrics.jsonl`` (one JSON record a line) and TensorBoard, rank 0 only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import VLAEError
from ..outputs import dumps, write_error

__all__ = ["Metrics"]


class Metrics:
    """Appends JSON records to ``metrics.jsonl`` (and TensorBoard); rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool):
        self.enabled, self.writer = enabled, None
        self.path = run_dir / "metrics.jsonl"
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise VLAEError("train.tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.writer = SummaryWriter(str(run_dir / "tb"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(dumps(record) + "\n")
        except OSError as error:
            raise write_error(self.path, error) from None
        if self.writer is not None:
            prefix = record.get("split", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
