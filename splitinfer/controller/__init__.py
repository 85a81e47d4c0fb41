"""The division controller: live device activity, when to re-divide, and live rollouts of new divisions.

Public: :class:`ActivityWindow` (the front-end counts requests per device class with it),
:class:`ControllerConfig`, :class:`DivisionController`, :func:`read_status`; the daemon is
``python -m splitinfer.controller`` (``splitinfer-divider``).
"""

from splitinfer.controller.activity import ActivityWindow, ClassActivity, share_shift
from splitinfer.controller.placement import placement
from splitinfer.controller.policy import Basis, ControllerConfig, DivisionPolicy, Trigger

__all__ = [
    "ActivityWindow",
    "Basis",
    "ClassActivity",
    "ControllerConfig",
    "DivisionPolicy",
    "Trigger",
    "placement",
    "share_shift",
]
