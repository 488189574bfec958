"""The LRP presets (``captum_rap/composites.py``): unknown preset names and misspelt
keywords are errors, a keyword of another preset warns and changes nothing, the keywords
of each preset are listed.  (The rules the presets assign are checked against slow
references in ``rules/test_rules_reference.py`` and against zennit in
``integration/test_zennit_oracle.py``; the relevance filter option in
``rules/test_relevance_filter.py``.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_rap import CLRP, LRP, SGLRP
from captum_rap.composites import PRESETS, get_composite

DT = torch.float64


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5)).double().eval()


def images(n=2, seed=1):
    return torch.randn(n, 3, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(seed))


def test_unknown_preset_lists_presets():
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    with pytest.raises(ValueError) as info:
        LRP(model, composite="epsilon_plus_plus")
    msg = str(info.value)
    assert "epsilon_plus_plus" in msg
    for name in PRESETS:
        assert name in msg


def test_misspelt_preset_keyword_is_an_error():
    m = cnn()
    with pytest.raises(TypeError, match="gama"):
        LRP(m, "epsilon_gamma_box", gama=2.0)
    with pytest.raises(TypeError, match="epsilom"):
        CLRP(m, epsilom=0.1)
    with pytest.raises(TypeError, match="stabiliser"):
        SGLRP(m, "zplus_box", stabiliser=1e-3)
    with pytest.raises(TypeError, match="only apply to preset names"):
        get_composite(get_composite("epsilon"), epsilon=0.1)


def test_keyword_of_another_preset_warns_and_changes_nothing():
    m, x = cnn(), images()
    base = LRP(m, "epsilon_plus").attribute(x, target=1)
    with pytest.warns(UserWarning, match="does not use 'high', 'low'"):
        lrp = LRP(m, "epsilon_plus", low=-3.0, high=3.0)
    assert torch.equal(lrp.attribute(x, target=1), base)
    with pytest.warns(UserWarning, match="'gamma'"):
        LRP(m, "zplus", gamma=0.5)
    # a keyword the preset takes changes the map (gamma acts on the second convolution)
    torch.manual_seed(0)
    m2 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                       nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).double().eval()
    assert not torch.allclose(LRP(m2, "epsilon_gamma_box", gamma=2.0).attribute(x, target=1),
                              LRP(m2, "epsilon_gamma_box").attribute(x, target=1))


def test_preset_keywords_are_listed():
    from captum_rap.composites import preset_keywords

    assert preset_keywords("epsilon") == ["epsilon"]
    assert set(preset_keywords("epsilon_gamma_box")) == {"epsilon", "stabilizer", "gamma", "low", "high"}
    assert "bias" in preset_keywords()


def test_rule_written_for_needs_input_layer_keeps_working():
    # the flag was split into input_layer_only / needs_input_mask; a third-party rule that
    # set the old name would have silently lost the refusal and the input mask
    from types import SimpleNamespace

    from captum_rap.rules import Rule

    with pytest.warns(DeprecationWarning, match="needs_input_layer"):
        class OldStyle(Rule):
            needs_input_layer = True

    assert OldStyle.input_layer_only and OldStyle.needs_input_mask
    assert OldStyle().check_layer(SimpleNamespace(is_input_layer=False)) is not None
    assert OldStyle().check_layer(SimpleNamespace(is_input_layer=True)) is None

    class NewStyle(Rule):
        needs_input_mask = True

    assert not NewStyle.input_layer_only and NewStyle.needs_input_mask
