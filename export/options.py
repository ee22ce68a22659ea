"""What an export is asked to produce. Light on purpose: the CLIs import it at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from mpfl.errors import ConfigError

FORMATS = ("auto", "dense", "pruned", "sparse", "packed")
COMPRESSIONS = ("none", "zstd")
DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 13, 20  # packed needs 13; 20 is the TorchScript exporter's newest


@dataclass(frozen=True)
class ExportOptions:
    format: str = "auto"
    int8: bool = False
    compress: str = "none"
    opset: int = DEFAULT_OPSET

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"unknown format '{self.format}' (known: {', '.join(FORMATS)})")
        if self.compress not in COMPRESSIONS:
            raise ConfigError(f"unknown compression '{self.compress}' (known: none, zstd)")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConfigError(f"opset must be between {MIN_OPSET} and {MAX_OPSET}",
                              opset=self.opset)
