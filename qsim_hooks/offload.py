"""Models dispatched with accelerate's offloading hooks.

accelerate's ``AlignDevicesHook`` (``cpu_offload``, ``disk_offload``,
``device_map`` with offload) loads each weight before a forward by looking up
the parameter's *name* in its ``weights_map``, and lists those names with
``named_parameters(recurse=place_submodules)``. While a weight is instrumented
it is named ``<...>.parametrizations.weight.original`` and, seen from its own
layer, lives in a child module. So for the session's lifetime:

* a hook that recurses gets its map wrapped in a view that also answers to the
  parametrized names;
* a per-layer hook is replaced on the layer (``_hf_hook``) by a proxy that, after
  the hook's own ``pre_forward``, also loads the parametrized originals to the
  execution device, and after ``post_forward`` sends them back to ``meta``.

Both are handles like any other, undone on detach (the hook's own map object
and hook object come back). accelerate is imported only when such a hook exists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from .undo import UndoStack

__all__ = ["wrap_offload_maps"]

_PARAM = re.compile(r"(^|\.)parametrizations\.([^.]+)\.original$")


class _RenamedMap(Mapping):
    def __init__(self, base: Any, renames: dict[str, str]) -> None:
        self._base = base
        self._renames = renames

    def __getitem__(self, key: str) -> Any:
        return self._base[self._renames.get(key, key)]

    def __contains__(self, key: object) -> bool:
        return (self._renames.get(key, key) in self._base) if isinstance(key, str) else False

    def __iter__(self):
        return iter(self._base)

    def __len__(self) -> int:
        return len(self._base)

    def __getattr__(self, name: str) -> Any:  # dataset, prefix, ... of accelerate's maps
        return getattr(self._base, name)


def _plain(name: str) -> str:
    """``a.parametrizations.weight.original`` -> ``a.weight`` (the name accelerate's map knows)."""
    return _PARAM.sub(lambda mo: f"{mo.group(1)}{mo.group(2)}", name)


class _LoadParametrizedHook:
    """Proxy of a per-layer offloading hook that also loads parametrized originals."""

    def __init__(self, hook: Any, names: list[str]) -> None:
        self._hook = hook
        self._names = names  # "parametrizations.<w>.original" -> weights_map["<w>"]

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        from accelerate.utils import set_module_tensor_to_device  # optional dependency, present when hooked

        args, kwargs = self._hook.pre_forward(module, *args, **kwargs)
        for name in self._names:
            set_module_tensor_to_device(module, name, self._hook.execution_device,
                                        value=self._hook.weights_map[_plain(name)])
        return args, kwargs

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        from accelerate.utils import set_module_tensor_to_device  # optional dependency, present when hooked

        output = self._hook.post_forward(module, output)
        for name in self._names:
            set_module_tensor_to_device(module, name, "meta")
        return output

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hook, name)


def wrap_offload_maps(model: nn.Module) -> UndoStack:
    """Adapt every offloading hook in ``model`` (call after the weights are attached); undone by the stack."""
    handles = UndoStack()
    with handles.all_or_nothing():
        for m in model.modules():
            _adapt(m, handles)
    return handles


def _adapt(m: nn.Module, handles: UndoStack) -> None:
    top = getattr(m, "_hf_hook", None)
    if top is None:
        return
    hooks = list(getattr(top, "hooks", None) or [top])
    if not any(getattr(h, "offload", False) for h in hooks):
        return
    own = [n for n, _ in m.named_parameters() if _PARAM.fullmatch(n) and n.count(".") == 2]
    if own and len(hooks) == 1 and not getattr(top, "place_submodules", False) \
            and getattr(top, "weights_map", None) is not None:
        handles.setattr(m, "_hf_hook", _LoadParametrizedHook(top, own))
        return
    for hook in hooks:
        wmap = getattr(hook, "weights_map", None)
        if not getattr(hook, "offload", False) or wmap is None:
            continue
        recurse = bool(getattr(hook, "place_submodules", False))
        renames = {n: _plain(n) for n, _ in m.named_parameters(recurse=recurse) if _plain(n) != n}
        if renames:
            handles.setattr(hook, "weights_map", _RenamedMap(wmap, renames))
