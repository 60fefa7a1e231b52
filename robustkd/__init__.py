"""Command-line entry point of RobustKD-FM.

The library lives in `schemas`, `backbones`, `pipeline` and `trainer`.
"""
