"""jointseg: one segmentation network over several small joint MR datasets."""

from jointseg._version import __version__

__all__ = ["__version__", "Predictor"]


def __getattr__(name: str):
    # Lazy import keeps `import jointseg` light (no torch import for the CLI's --help).
    if name == "Predictor":
        from jointseg.inference.predictor import Predictor

        return Predictor
    raise AttributeError(name)
