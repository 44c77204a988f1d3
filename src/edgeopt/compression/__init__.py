"""Pruning (and, later, clustering) of ONNX weights: algorithms that return new weights
(:mod:`.masks`, :mod:`.surgeon`) and the verb that selects layers and writes them (:mod:`.prune`)."""
