"""rnope — hybrid-attention language models (RNoPE-SWA, arXiv 2501.18795) and their baselines."""

__version__ = "0.1.0"

from .config import PRESETS, LayerSpec, ModelConfig, NopeOptions, RopeOptions  # noqa: E402
from .model import Transformer, init_weights  # noqa: E402
from .cache import HybridCache  # noqa: E402
from .inference import generate  # noqa: E402
from .checkpoint import load  # noqa: E402
from .checkpoint import save_model as save  # noqa: E402
from .nope_scale import set_nope_scale  # noqa: E402

__all__ = [
    "PRESETS",
    "HybridCache",
    "LayerSpec",
    "ModelConfig",
    "NopeOptions",
    "RopeOptions",
    "Transformer",
    "generate",
    "init_weights",
    "load",
    "save",
    "set_nope_scale",
]
