"""Sparse ONNX export, verification with onnxruntime, and the torch-free on-device runner.

Importing ``export`` (or ``export.runner``) does not import torch: the torch-side names
below load on first use, so a device with only onnxruntime and numpy can use ``Runner``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from export.options import ExportOptions
from export.runner import Runner

if TYPE_CHECKING:
    from export.onnx_export import ExportResult, export_model
    from export.prune import prune_filters
    from export.report import VerifyReport
    from export.verify import export_and_verify, verification_data, verify_export

_LAZY = {
    "ExportResult": "export.onnx_export",
    "VerifyReport": "export.report",
    "export_and_verify": "export.verify",
    "export_model": "export.onnx_export",
    "prune_filters": "export.prune",
    "verification_data": "export.verify",
    "verify_export": "export.verify",
}

__all__ = [
    "ExportOptions",
    "ExportResult",
    "Runner",
    "VerifyReport",
    "export_and_verify",
    "export_model",
    "prune_filters",
    "verification_data",
    "verify_export",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
