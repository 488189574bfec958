"""captum_rap: propagation-based attribution methods for Captum.

RAP, LRP rules and presets, CLRP/SGLRP and CD/ACD, all as Captum ``Attribution``
objects that run on unchanged PyTorch models.
"""

from ._core.clrp import CLRP
from ._core.lrp import LRP, LayerLRP
from ._core.rap import RAP, LayerRAP
from ._core.cd import CD
from ._core.acd import ACD, ACDHierarchy
from ._core.sglrp import SGLRP
from ._engine import UnsupportedOperationError, supported_operations
from ._engine.optable import register_elementwise_module
from .composites import Composite, get_composite
from . import metrics  # noqa: F401  (captum_rap.metrics: region_perturbation, relevance_distribution)

__version__ = "0.1.0.dev0"

__all__ = [
    "LRP",
    "LayerLRP",
    "RAP",
    "LayerRAP",
    "CD",
    "ACD",
    "ACDHierarchy",
    "CLRP",
    "SGLRP",
    "Composite",
    "get_composite",
    "UnsupportedOperationError",
    "supported_operations",
    "register_elementwise_module",
]
