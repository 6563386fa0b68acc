"""Snapshot a model and verify that an instrumentation left nothing behind (zennit-style)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module_mod


def snapshot(model: nn.Module) -> dict:
    mods = {}
    for name, m in model.named_modules(remove_duplicate=False):
        mods[name] = {
            "type": type(m),
            "params": {k: (id(p), p.requires_grad, p.detach().clone()) for k, p in m._parameters.items()
                       if p is not None},
            "buffers": {k: b.detach().clone() for k, b in m._buffers.items() if b is not None},
            "fwd_hooks": list(m._forward_hooks.keys()),
            "pre_hooks": list(m._forward_pre_hooks.keys()),
            "bwd_hooks": list(m._backward_hooks.keys()),
            "parametrized": hasattr(m, "parametrizations"),
            "training": m.training,
            "ours": sorted(k for k in vars(m) if k.startswith("_qsim_hooks")),  # e.g. the session record
        }
    sd = model.state_dict()
    return {"mods": mods, "sd_keys": list(sd.keys()),
            "sd": {k: v.detach().clone() for k, v in sd.items()},
            "global": (len(_module_mod._global_forward_hooks), len(_module_mod._global_forward_pre_hooks)),
            "torch_fns": (torch.matmul, torch.bmm, torch.nn.functional.linear)}


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():  # compare bit patterns (NaN == NaN, -0.0 != 0.0)
        a, b = a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)
    return torch.equal(a, b)


def verify_unchanged(model: nn.Module, snap: dict, *, values: bool = True, ids: bool = True) -> None:
    """Assert no hook, parametrization or class change is left and (optionally) values are bit-identical
    and the Parameter objects are the same (``ids``; accelerate's offload swaps them by design)."""
    now = snapshot(model)
    assert now["global"] == snap["global"], "global module hooks left behind"
    assert now["torch_fns"] == snap["torch_fns"], "torch functions left patched"
    assert set(now["mods"]) == set(snap["mods"]), "module tree changed"
    for name, before in snap["mods"].items():
        after = now["mods"][name]
        assert after["type"] is before["type"], f"{name}: class changed to {after['type']}"
        assert not after["parametrized"], f"{name}: parametrizations left"
        assert not after["ours"], f"{name}: qsim_hooks attributes left: {after['ours']}"
        assert after["fwd_hooks"] == before["fwd_hooks"], f"{name}: forward hooks left"
        assert after["pre_hooks"] == before["pre_hooks"], f"{name}: forward pre-hooks left"
        assert after["bwd_hooks"] == before["bwd_hooks"], f"{name}: backward hooks left"
        assert set(after["params"]) == set(before["params"]), f"{name}: parameter names changed"
        for k, (pid, rg, val) in before["params"].items():
            pid2, rg2, val2 = after["params"][k]
            assert pid2 == pid or not ids, f"{name}.{k}: a different Parameter object"
            assert rg2 == rg, f"{name}.{k}: requires_grad changed"
            if values:
                assert _bits_equal(val, val2), f"{name}.{k}: values changed"
        if values:
            for k, v in before["buffers"].items():
                assert _bits_equal(v, after["buffers"][k]), f"{name}.{k} (buffer): values changed"
    assert now["sd_keys"] == snap["sd_keys"], "state_dict keys changed"
    if values:
        for k, v in snap["sd"].items():
            assert _bits_equal(v, now["sd"][k]), f"state_dict[{k!r}] changed"
