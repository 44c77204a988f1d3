"""Pruning and clustering of weights: algorithms that return new weights (:mod:`.masks`,
:mod:`.surgeon`, :mod:`.kmeans`), the schedules training-time pruning follows
(:mod:`.schedules`), and the one-shot verbs on ONNX that select layers and write them
(:mod:`.prune`, :mod:`.cluster`, sharing :mod:`.layers`)."""
