"""miso-bench: an experiment-tracked benchmark suite for fine-scale permafrost and
soil-taxonomy mapping.

The package stays light to import; :func:`load_model` (a trained run's model, ready to
predict) and :func:`predict_map` (a run turned into map tiles) are loaded on first use.
"""

from typing import Any

from .version import __version__

__all__ = ["__version__", "load_model", "predict_map"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from .inference import load_model

        return load_model
    if name == "predict_map":
        from .inference.maps import predict_map

        return predict_map
    raise AttributeError(f"module 'miso_bench' has no attribute {name!r}")
