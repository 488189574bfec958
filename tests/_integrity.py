"""The model-state snapshot of the integrity checks: parameters (identity, values,
requires_grad), buffers, hooks (module and global), inplace flags, train/eval mode, module
attributes and rules.  Used by ``engine/test_model_integrity.py`` and the sweeps that check
that a call leaves the model unchanged."""

from __future__ import annotations

import torch


def _hook_dicts(module):
    names = ["_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
             "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"]
    return {n: dict(getattr(module, n)) for n in names if hasattr(module, n)}


def snapshot(model):
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "params": {k: (id(p), p.requires_grad) for k, p in model.named_parameters()},
        "modules": {
            n: {
                "hooks": _hook_dicts(m),
                "dict_keys": sorted(m.__dict__.keys()),
                "training": m.training,
                "inplace": getattr(m, "inplace", None),
                "rule": m.__dict__.get("rule", None),
            }
            for n, m in model.named_modules()
        },
        "global_hooks": (dict(torch.nn.modules.module._global_forward_hooks),
                         dict(torch.nn.modules.module._global_forward_pre_hooks),
                         dict(torch.nn.modules.module._global_backward_hooks)),
    }


def assert_unchanged(model, before):
    after = snapshot(model)
    assert before["state"].keys() == after["state"].keys()
    for k in before["state"]:
        assert torch.equal(before["state"][k], after["state"][k]), k
    assert before["params"] == after["params"]
    assert before["modules"].keys() == after["modules"].keys()
    for n in before["modules"]:
        b, a = before["modules"][n], after["modules"][n]
        assert b["dict_keys"] == a["dict_keys"], (n, set(a["dict_keys"]) ^ set(b["dict_keys"]))
        assert b["training"] == a["training"], n
        assert b["inplace"] == a["inplace"], n
        assert b["rule"] is a["rule"], n
        assert b["hooks"].keys() == a["hooks"].keys()
        for hk in b["hooks"]:
            assert b["hooks"][hk].keys() == a["hooks"][hk].keys(), (n, hk)
            for key in b["hooks"][hk]:
                assert b["hooks"][hk][key] is a["hooks"][hk][key], (n, hk)
    assert before["global_hooks"] == after["global_hooks"]
