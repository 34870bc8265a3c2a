"""The SavedModel that TensorFlow Serving loads: signatures, the serving module, the top-K index, assets, publishing.

May import: the core modules and the components (`backbones`, `features`). Imported by `training`, the entry
points, `serving` (the signature names only) and benchmarks.
"""
