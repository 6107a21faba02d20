"""Import the `streaming` package (MDS format) on machines without a working torchvision.

`streaming/__init__.py` imports `streaming.vision`, which imports torchvision; on a CPU-only
torch install no matching torchvision exists. `MDSWriter`, `StreamingDataset`, `Stream` and
`StreamingDataLoader` never use it, so when torchvision cannot be imported we register an empty
`streaming.vision` module first. Only streaming's vision dataset classes become unavailable.
"""

from __future__ import annotations

import importlib
import sys
import types


def _torchvision_importable() -> bool:
    try:
        importlib.import_module("torchvision")
    except Exception:  # ImportError, or torchvision's own "operator ... does not exist" RuntimeError
        return False
    return True


def import_streaming():
    """Return the imported `streaming` module, stubbing `streaming.vision` when needed."""
    if "streaming" in sys.modules:
        return sys.modules["streaming"]
    if "streaming.vision" not in sys.modules and not _torchvision_importable():
        stub = types.ModuleType("streaming.vision")
        stub.__doc__ = "Empty stand-in (torchvision unavailable); see mixvlp_ds.streaming_compat."
        sys.modules["streaming.vision"] = stub
    return importlib.import_module("streaming")
