"""Post-processing stages: the data-dependent end of a model that runs outside its exported program.

Some models end in work whose output size depends on the data (a detector's box decoding and
non-maximum suppression) or that ``torch.export`` cannot trace. Such a model is divided without it, and
its division manifest declares the stage (:class:`PostprocessSpec`): a name from this registry, the model
outputs it reads and its parameters (plain JSON). The stage runs on the last place of the plan, after the
last partition: on the front-end when the chain ends on a server, on the device's agent when the device
runs the tail. Stages are pure functions of tensors, registered here by name: a manifest can only name
one, never carry code.

Public surface: :class:`PostprocessSpec`, :func:`run_postprocess`, :func:`register`, :data:`STAGES`.
"""

from splitinfer.postprocess.stage import STAGES, PostprocessSpec, Stage, register, run_postprocess

__all__ = ["STAGES", "PostprocessSpec", "Stage", "register", "run_postprocess"]
