"""The SavedModel that TensorFlow Serving loads, one job a module.

Owns `signatures` (the serving contract's names: signatures, inputs, outputs, files of a version; no TensorFlow),
`index` (the top-K indexes, exact and bfloat16), `module` (`ServingModule`, the exported `tf.Module` and its input
checks), `versions` (numeric version folders; no TensorFlow), `assets` (the vocabulary, the item table),
`warmup` (the warmup requests and their `PredictionLog` wire format) and `publish` (`export_saved_model`: the
staged, verified, atomic export). This package module imports nothing, so `serving` reads `signatures` without
TensorFlow.

May import: the core modules and the components (`mdcns_tf.config`, `mdcns_tf.features`, `mdcns_tf.backbones`);
never `mdcns_tf.training` or an entry point. Imported by `training`, the entry points, `serving` (`signatures`
only) and benchmarks.
"""
