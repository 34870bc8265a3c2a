"""TF Serving side of mdcns-tf: model server config, batching parameters, docs and the REST/gRPC client."""
