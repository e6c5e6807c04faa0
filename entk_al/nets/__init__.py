"""Models and training: the built-in networks, the penultimate-feature hook, the training recipe."""
