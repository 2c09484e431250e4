"""normkit's Keras layers: thin wrappers that own weights and call the core."""

from normkit.layers.batch_normalization import BatchNormalization
from normkit.layers.group_normalization import GroupNormalization
from normkit.layers.instance_normalization import InstanceNormalization
from normkit.layers.layer_normalization import LayerNormalization

__all__ = ["BatchNormalization", "GroupNormalization", "InstanceNormalization", "LayerNormalization"]
