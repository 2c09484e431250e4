"""normkit: the normalization layers TensorFlow Addons and tf.keras 2 had, for Keras 3 on JAX, TensorFlow
and PyTorch.

    >>> import normkit
    >>> layer = normkit.GroupNormalization(groups=5, axis=3)
"""

from normkit import ops
from normkit._version import __version__
from normkit.core import fast as _fast
from normkit.layers import (
    BatchNormalization,
    GroupNormalization,
    InstanceNormalization,
    LayerNormalization,
)

_fast.load_active_backend()

__all__ = [
    "BatchNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "__version__",
    "ops",
]
