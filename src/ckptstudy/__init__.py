"""ckptstudy: repetition mechanisms measured across training checkpoints."""

__version__ = "0.1.0"
