"""Student trainer: streams precomputed shards and runs student-only forward passes.

    robustkd train --config configs/fashion-mnist.yaml --method robustkd
    robustkd evaluate --config configs/fashion-mnist.yaml

It never imports `pipeline` and never builds or runs the teacher: the KD and activation targets
come from the shards, whose manifest is checked against the student's base weights first.
"""
