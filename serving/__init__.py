"""The TF Serving side of mdcns-tf: the model server and batching configs, their docs, and the REST/gRPC client.

May import: from the library, only the signature names of the SavedModel (`mdcns_tf.savedmodel.signatures`), so
the client stays light (no TensorFlow) and cannot drift from what the export writes.
"""
