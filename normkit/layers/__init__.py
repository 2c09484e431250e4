"""normkit's Keras layers: thin wrappers that own weights and call the core."""

from normkit.layers.batch_normalization import BatchNormalization
from normkit.layers.filter_response_normalization import FilterResponseNormalization
from normkit.layers.group_normalization import GroupNormalization
from normkit.layers.instance_normalization import InstanceNormalization
from normkit.layers.layer_normalization import LayerNormalization
from normkit.layers.rms_normalization import RMSNormalization
from normkit.layers.tlu import TLU

__all__ = [
    "TLU",
    "BatchNormalization",
    "FilterResponseNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "RMSNormalization",
]
