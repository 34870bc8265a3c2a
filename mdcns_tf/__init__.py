"""mdcns-tf: sequential recommenders on TensorFlow trained with negative sampling (MDCNS and baselines).

TFRS 0.7.7 needs `tf.keras` to be Keras 2, so the legacy-Keras switch is set before TensorFlow is imported
anywhere in the package. Models are written against `import tf_keras as keras`. TensorFlow's C++ INFO and WARNING
lines (CPU feature guards and the like, meaningless on a CPU machine) are hidden unless the user chose a level;
errors still show. This module imports nothing else: `import mdcns_tf` stays instant.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
