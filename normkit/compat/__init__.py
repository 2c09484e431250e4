"""Opening what tf.keras 2 and TensorFlow Addons saved: every format, mapped to normkit's layers in one place.

    model = normkit.load_legacy_model("old.h5")   # also a SavedModel directory, a Keras 2 .keras file
    model.save("new.keras")                        # a native Keras 3 file, loadable on any backend

See docs/legacy-files.md.
"""

from normkit.compat.errors import LegacyFileError
from normkit.compat.loader import load_legacy_model, load_legacy_weights
from normkit.compat.mapping import custom_objects

__all__ = ["LegacyFileError", "custom_objects", "load_legacy_model", "load_legacy_weights"]
