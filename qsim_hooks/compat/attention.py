"""INT-FP-QSim's attention class names, for old scripts that build mappings from them.

Old scripts extend the default mapping with INT-FP-QSim's replacement classes as values (ImageBind:
``{ib.MultiheadAttention: qattn.ImageBindMha, ...}``). Compat replaces nothing and uses only a mapping's
keys, so after changing ``import int_fp_qsim.attention as qattn`` to ``import qsim_hooks.compat.attention
as qattn`` these names only have to exist; they stand for the torch class they replaced. The attention
internals themselves are not simulated yet (``replace_layers`` warns).
"""

from torch import nn

__all__ = ["MultiheadAttention", "ImageBindMha"]

MultiheadAttention = nn.MultiheadAttention
ImageBindMha = nn.MultiheadAttention
