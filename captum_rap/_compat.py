"""The one place where captum_rap touches Captum's private helpers.

Captum does not promise a stable API for its underscore-prefixed helpers, so every
such import lives here; if a Captum release moves one, only this module changes.
"""

from captum._utils.common import (  # noqa: F401
    _expand_additional_forward_args,
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
    _select_targets,
)
from captum._utils.typing import TargetType, TensorOrTupleOfTensorsGeneric  # noqa: F401
from captum.attr._utils.attribution import (  # noqa: F401
    Attribution,
    GradientAttribution,
)
from captum.attr._utils.lrp_rules import (  # noqa: F401
    Alpha1_Beta0_Rule as CaptumAlpha1Beta0Rule,
    EpsilonRule as CaptumEpsilonRule,
    GammaRule as CaptumGammaRule,
    IdentityRule as CaptumIdentityRule,
    PropagationRule,
)
from captum.log import log_usage  # noqa: F401
