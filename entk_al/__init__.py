"""entk-al: look-ahead active learning with empirical neural tangent kernels (pNTK).

Data flows one way: dataset (:mod:`entk_al.data`) -> model/trainer -> kernel
(:mod:`entk_al.ntk`) -> look-ahead (:mod:`entk_al.lookahead`) -> strategy (the top-level
``strategies`` package, looked up lazily by :mod:`entk_al.plugins`) -> loop
(:mod:`entk_al.loop`, :mod:`entk_al.checkpoint`) -> results -> CLI (:mod:`entk_al.cli`).
README "Where things live" has the map.
"""

__version__ = "0.1.0"
