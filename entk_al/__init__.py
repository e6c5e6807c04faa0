"""entk-al: look-ahead active learning with empirical neural tangent kernels (pNTK).

Data flows one way: dataset -> model/trainer -> kernel (:mod:`entk_al.ntk`) -> look-ahead
(:mod:`entk_al.lookahead`) -> strategy (``strategies``) -> loop (:mod:`entk_al.loop`) ->
results -> CLI (:mod:`entk_al.cli`).
"""

__version__ = "0.1.0"
