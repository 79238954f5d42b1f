"""Import torchvision (needed by open_clip and the ResNet-18 reward net) where its compiled ops do not match
the installed torch.

torchvision 0.28.0 from PyPI is a CUDA build: on the CPU build of torch 2.13 its ``_C`` extension
fails to load, and ``import torchvision`` raises ``RuntimeError: operator torchvision::nms does not
exist`` while registering fake kernels for ops that were never defined (docs/contributing.md).
Defining the schemas of those ops first lets the import finish; transforms and models then work,
torchvision's C++ ops (nms, roi_align, ...) do not, and nothing here uses them.
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch

#: Schemas of the ops whose fake kernels torchvision registers at import time.
_OP_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)

# Kept for the life of the process: the definitions vanish when the Library is collected.
_library = None


def import_torchvision() -> ModuleType:
    """``import torchvision``, defining its missing op schemas if the plain import fails on them."""
    global _library
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::nms does not exist" not in str(error):
            raise
        # The failed import left half-initialised modules behind; they must not be reused.
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[name]
        if _library is None:
            _library = torch.library.Library("torchvision", "DEF")
            for schema in _OP_SCHEMAS:
                _library.define(schema)
        import torchvision
    return torchvision
