"""The SceneDPO loss as a pure function (paper §3.3), and preference items."""
from __future__ import annotations

import math

import pytest
import torch

from leovl_ros.training.records import Record
from leovl_ros.training.scene_dpo import NegativeScenes, preference_items, scene_dpo_loss


def _softplus(x: float) -> float:  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


def test_loss_equals_hand_computed_value():
    chosen = torch.tensor([-2.0, -5.0])
    rejected = torch.tensor([-4.0, -3.0])
    negative = torch.tensor([-3.0, -6.0])
    tokens = torch.tensor([2.0, 4.0])
    out = scene_dpo_loss(chosen, rejected, negative, tokens, w_a=0.5, w_s=0.5, beta_a=0.2, beta_s=0.03)
    # margins: answer (2, -2), scene (1, 1); -log sigmoid(x) = log(1 + exp(-x))
    la = (_softplus(-0.2 * 2) + _softplus(0.2 * 2)) / 2
    ls = _softplus(-0.03 * 1)
    nll = (2.0 + 5.0) / 2  # L_NLL = E[-log pi(a_w | s_w, q)], log pi summed over the answer's tokens (paper)
    assert out.answer_loss.item() == pytest.approx(la, rel=1e-6)
    assert out.scene_loss.item() == pytest.approx(ls, rel=1e-6)
    assert out.nll_loss.item() == pytest.approx(nll, rel=1e-6)
    assert out.loss.item() == pytest.approx(0.5 * la + 0.5 * ls + nll, rel=1e-6)
    assert (out.answer_accuracy, out.scene_accuracy) == (0.5, 1.0)
    per_token = scene_dpo_loss(chosen, rejected, negative, tokens, nll="token")
    assert per_token.nll_loss.item() == pytest.approx(7.0 / 6.0)  # -(sum log p) / (answer tokens)
    assert per_token.answer_loss.item() == pytest.approx(la, rel=1e-6)  # only L_NLL changes


def test_reference_log_probs_are_subtracted():
    c, r, n = torch.tensor([-2.0]), torch.tensor([-4.0]), torch.tensor([-3.0])
    rc, rr, rn = torch.tensor([-1.0]), torch.tensor([-5.0]), torch.tensor([-1.5])
    out = scene_dpo_loss(c, r, n, torch.tensor([1.0]), ref_chosen=rc, ref_rejected=rr, ref_negative_scene=rn,
                         beta_a=1.0, beta_s=1.0)
    # r(a_w|s_w) = -1, r(a_l|s_w) = 1, r(a_w|s_l) = -1.5 -> margins -2 and 0.5
    assert out.answer_margin.tolist() == [-2.0] and out.scene_margin.tolist() == [0.5]
    assert out.answer_loss.item() == pytest.approx(_softplus(2.0))
    assert out.scene_loss.item() == pytest.approx(_softplus(-0.5))
    with pytest.raises(ValueError, match="all three reference"):
        scene_dpo_loss(c, r, n, torch.tensor([1.0]), ref_chosen=rc)


@pytest.mark.parametrize("beta", [0.03, 0.2, 1.0])
def test_log2_at_zero_margin_and_symmetric(beta):
    lp = torch.tensor([-3.0, -1.0, -7.0])
    tokens = torch.tensor([3.0, 1.0, 7.0])
    out = scene_dpo_loss(lp, lp.clone(), lp.clone(), tokens, beta_a=beta, beta_s=beta)
    assert out.answer_loss.item() == pytest.approx(math.log(2))
    assert out.scene_loss.item() == pytest.approx(math.log(2))
    assert out.loss.item() == pytest.approx(math.log(2) + 11.0 / 3)  # w_a + w_s = 1, NLL = mean(3, 1, 7)
    m = torch.tensor([0.7, -1.3, 2.0])
    up = scene_dpo_loss(lp, lp - m, lp - m, tokens, beta_a=beta, beta_s=beta)
    down = scene_dpo_loss(lp, lp + m, lp + m, tokens, beta_a=beta, beta_s=beta)
    # -log sigmoid(x) + log sigmoid(-x) = -x: the loss is log 2 minus / plus the same odd part
    assert (up.answer_loss - down.answer_loss).item() == pytest.approx(-beta * m.mean().item(), abs=1e-6)
    assert (up.scene_loss - down.scene_loss).item() == pytest.approx(-beta * m.mean().item(), abs=1e-6)


def test_gradient_pushes_chosen_up_and_rejected_down():
    chosen = torch.tensor([-2.0, -3.0], requires_grad=True)
    rejected = torch.tensor([-2.5, -1.0], requires_grad=True)
    negative = torch.tensor([-1.0, -4.0], requires_grad=True)
    scene_dpo_loss(chosen, rejected, negative, torch.tensor([2.0, 2.0])).loss.backward()
    assert (chosen.grad < 0).all()  # gradient descent raises log p(chosen)
    assert (rejected.grad > 0).all()  # ... lowers the rejected answer
    assert (negative.grad > 0).all()  # ... and the chosen answer under the wrong scene
    # Without NLL the answer term alone is still antisymmetric between chosen and rejected.
    c, r = chosen.detach().requires_grad_(), rejected.detach().requires_grad_()
    scene_dpo_loss(c, r, negative.detach(), torch.tensor([2.0, 2.0]), w_s=0.0, w_nll=0.0).loss.backward()
    assert torch.allclose(c.grad, -r.grad)


def test_shape_checks():
    with pytest.raises(ValueError, match=r"\(B,\) tensors"):
        scene_dpo_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.ones(2))


def _pref(scene: str, i: int) -> Record:
    return Record(scene_id=scene, task="qa", instruction=f"q{i}?", response="yes", rejected="no", source="t")


def test_negative_scenes_are_other_scenes_redrawn_every_epoch():
    records = [_pref(s, i) for i, s in enumerate(["a", "a", "b", "c", "b", "a"])]
    items = preference_items(records)
    negatives = NegativeScenes(["a", "b", "c", "d"], seed=3)
    draws = [[negatives(it, epoch) for it in items] for epoch in range(6)]
    assert all(n != it.record.scene_id for row in draws for n, it in zip(row, items))
    assert draws == [[NegativeScenes(["d", "c", "b", "a", "a"], 3)(it, e) for it in items] for e in range(6)]
    assert len({tuple(row) for row in draws}) > 1  # not fixed per pair: each epoch draws anew
    assert len({row[0] for row in draws}) > 1  # one pair meets several negative scenes over the epochs
    assert draws[0] != [NegativeScenes(["a", "b", "c", "d"], seed=4)(it, 0) for it in items]  # the seed matters
    with pytest.raises(ValueError, match="at least two scenes"):
        NegativeScenes(["a", "a"], seed=0)
    with pytest.raises(ValueError, match="no 'rejected' answer"):
        preference_items([_pref("a", 0), Record(scene_id="b", task="qa", instruction="q?", response="x",
                                                source="t")])
    assert [it.kind for it in preference_items(records[:2], ["wrong", "rephrased_rules"])] == ["wrong",
                                                                                              "rephrased_rules"]
