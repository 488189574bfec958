"""Private engine of :class:`captum_rap.CD` and :class:`captum_rap.ACD`.

``tensor``      -- the decomposed tensor types, the dispatch and the handler registry;
``linear``, ``affine``, ``nonlinear``, ``norm``, ``attention``, ``tokens``, ``lstm``
                -- the CD rules, each registered for the torch functions it decomposes;
``reference``   -- the two-part arithmetic of the reference ``acd`` package;
``local``, ``local_rules`` -- the local (boxed) computation of image masks;
``agglomerate`` -- the ACD agglomeration procedures (images and token sequences);
``hierarchy``   -- their result, ``ACDHierarchy`` / ``ACDGroup``, with its JSON export and
                import; ``hierarchy_plot`` -- its matplotlib figures.

Importing this package registers every rule.
"""

from . import tensor  # noqa: F401  (first: the registry)
from . import affine, attention, linear, lstm, nonlinear, norm, tokens  # noqa: F401
