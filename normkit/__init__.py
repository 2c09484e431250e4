"""normkit: the normalization layers TensorFlow Addons and tf.keras 2 had, for Keras 3 on JAX, TensorFlow
and PyTorch.

    >>> import normkit
    >>> layer = normkit.GroupNormalization(groups=5, axis=3)
"""

from normkit import ops
from normkit._version import __version__
from normkit.compat import LegacyFileError, custom_objects, load_legacy_model, load_legacy_weights
from normkit.core import fast as _fast
from normkit.distributed import synchronize
from normkit.layers import (
    TLU,
    BatchNormalization,
    FilterResponseNormalization,
    GroupNormalization,
    InstanceNormalization,
    LayerNormalization,
    RMSNormalization,
)

_fast.load_active_backend()

__all__ = [
    "TLU",
    "BatchNormalization",
    "FilterResponseNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "LegacyFileError",
    "RMSNormalization",
    "__version__",
    "custom_objects",
    "load_legacy_model",
    "load_legacy_weights",
    "ops",
    "synchronize",
]
