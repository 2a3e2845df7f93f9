"""Checkpoints and the models they hold: which steps exist, loading, the embedded micro suite."""
