"""token_selection is a training option: a recipe may continue a trained bundle under ``question``."""
from __future__ import annotations

import pytest

from leovl_ros.model.config import LeoVLConfig
from leovl_ros.model.tiny import tiny_leovl
from leovl_ros.training.modeling import _bundle_overrides


def test_a_bundle_continues_under_question_selection():
    stored = LeoVLConfig(base_model="tiny", hidden_size=32)
    overrides = _bundle_overrides(stored, {"grid": {"token_selection": "question", "max_tokens": 64}})
    assert dict(overrides.grid) == {"token_selection": "question", "max_tokens": 64}
    model = tiny_leovl(hidden_size=32)
    model.set_overrides(overrides)
    assert (model.config.grid.token_selection, model.config.grid.max_tokens) == ("question", 64)
    with pytest.raises(ValueError, match="token_selection"):
        model.set_overrides(_bundle_overrides(stored, {"grid": {"token_selection": "relevant"}}))
