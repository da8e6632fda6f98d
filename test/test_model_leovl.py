"""LeoVL on a tiny random Qwen2.5-VL: scene tokens in the prompt, masking, gradients, learning."""
from __future__ import annotations

import pytest
import torch

from leovl_ros.model.config import GenerationConfig, LeoVLConfig
from leovl_ros.model.leovl import count_trainable_parameters
from leovl_ros.model.prompts import SceneQuery
from leovl_ros.model.tokenizer import load_qwen_tokenizer
from leovl_ros.model.tiny import qwen25vl_7b_config, random_scene, tiny_leovl, tiny_qwen25vl_config

Q = SceneQuery("qa", "What color is the chair?")
GREEDY = GenerationConfig(num_beams=1, repetition_penalty=1.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def tok():
    return load_qwen_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_leovl(seed=0, tokenizer=tok)


def _lora_count(hidden, inter, layers, heads, kv_heads, r=16):
    """LoRA parameters on q,k,v,o,gate,up,down: r * (in + out) per projection."""
    kv = hidden // heads * kv_heads
    per_layer = (hidden + hidden) + 2 * (hidden + kv) + (hidden + hidden) + 2 * (hidden + inter) + (inter + hidden)
    return r * per_layer * layers


def test_scene_tokens_fill_the_placeholders(model):
    scene = random_scene(model, 300, seed=1)
    tokens = model.scene_tokens(scene, Q)
    grid = model.scene_grid(scene, Q)
    assert tokens.shape == (grid.num_tokens, 64) and 0 < grid.num_tokens <= 750
    batch = model.prepare_batch([scene, None], [Q, Q])
    ids = batch.input_ids
    assert batch.num_scene_tokens == [grid.num_tokens, 0]
    assert int((ids[0] == 151655).sum()) == grid.num_tokens and int((ids[1] == 151655).sum()) == 0
    row = ids[0].tolist()
    assert row == model.prompts.prompt_ids(Q, grid.num_tokens)  # the longer row has no padding
    torch.testing.assert_close(batch.inputs_embeds[0][ids[0] == 151655], tokens.detach())
    # the empty scene is left-padded by exactly the missing placeholders
    assert int((batch.attention_mask[1] == 0).sum()) == grid.num_tokens
    assert batch.position_ids[1, -1] == len(model.prompts.prompt_ids(Q, 0)) - 1


def test_one_scene_token_matters_a_padded_position_does_not(model):
    big, small = random_scene(model, 300, seed=1), random_scene(model, 40, seed=2)
    with torch.no_grad():
        batch = model.prepare_batch([big, small], [Q, Q])
        base = model.logits(batch)  # (2, L, V)
        pad = int((batch.attention_mask[1] == 0).sum())
        assert pad > 0
        scene_pos = (batch.input_ids[1] == 151655).nonzero()[0, 0]
        batch.inputs_embeds[1, scene_pos] += 1.0  # one scene token of row 1
        changed = model.logits(batch)
        assert (changed[1, -1] - base[1, -1]).abs().max() > 1e-4
        torch.testing.assert_close(changed[0], base[0])  # rows stay independent
        batch.inputs_embeds[1, scene_pos] -= 1.0
        batch.inputs_embeds[1, :pad] = torch.randn(pad, 64) * 10  # padded positions of row 1
        padded = model.logits(batch)
        torch.testing.assert_close(padded[1, pad:], base[1, pad:], rtol=1e-5, atol=1e-5)


def test_padding_does_not_change_scores(model):
    big, small = random_scene(model, 300, seed=1), random_scene(model, 40, seed=2)
    q2 = SceneQuery("scene_caption", "Describe the room.")
    together = model.score([big, small, None], [Q, q2, Q], ["red", "A small room with a bed.", "blue"])
    alone = torch.cat([model.score([s], [q], [a]) for s, q, a in
                       [(big, Q, "red"), (small, q2, "A small room with a bed."), (None, Q, "blue")]])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)
    lp, n = model.sequence_logprobs([big], [Q], ["red"])
    assert n.tolist() == [2]  # "red" + <|im_end|>
    assert lp.item() < 0


def test_gradients_reach_lora_fourier_anchor_only(tok):
    model = tiny_leovl(seed=3, tokenizer=tok)
    scene = random_scene(model, 300, seed=1)
    query = SceneQuery("object_caption", "Describe the object here.", anchor_center=(2.0, 2.0, 1.0), anchor_radius=1.0)
    lp, n = model.sequence_logprobs([scene], [query], ["A red chair."])
    (-(lp / n).mean()).backward()
    named = dict(model.model.named_parameters())
    lora_b = [p for k, p in named.items() if "lora_B" in k]
    assert len(lora_b) == 2 * 7 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
    assert model.heads.fourier_mlp[2].weight.grad.abs().sum() > 0
    assert model.heads.anchor.grad.abs().sum() > 0
    frozen = [k for k, p in named.items() if "lora_" not in k]
    assert any("visual" in k for k in frozen) and any("embed_tokens" in k for k in frozen)
    assert all(named[k].grad is None and not named[k].requires_grad for k in frozen)
    # without an anchor in the query the anchor gets no gradient
    model.heads.anchor.grad = None
    lp, n = model.sequence_logprobs([scene], [Q], ["red"])
    lp.sum().backward()
    assert model.heads.anchor.grad is None or model.heads.anchor.grad.abs().sum() == 0


def test_few_steps_learn_one_example(tok):
    model = tiny_leovl(seed=4, tokenizer=tok)
    scene = random_scene(model, 300, seed=5)
    answer = "The chair is red."
    before = model.score([scene], [Q], [answer]).item()
    assert model.generate([scene], [Q], GREEDY) != [answer]
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(12):
        lp, n = model.sequence_logprobs([scene], [Q], [answer])
        loss = -(lp / n).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.score([scene], [Q], [answer]).item()
    assert after > before + 3.0
    assert model.generate([scene], [Q], GREEDY) == [answer]
    assert model.generate([scene], [Q], GenerationConfig(max_new_tokens=12)) == [answer]  # paper beam settings


def test_grounding_score(model):
    scene = random_scene(model, 200, seed=6)
    assert model.grounding_score(scene, Q, "red", other=scene) == pytest.approx(0.0, abs=1e-4)
    assert model.grounding_score(scene, Q, "red") != pytest.approx(0.0, abs=1e-6)
    empty = model.new_voxel_map()
    assert model.scene_tokens(empty, Q).shape == (0, 64)
    assert model.grounding_score(empty, Q, "red") == pytest.approx(0.0, abs=1e-4)


def test_trainable_parameter_counts(tok):
    tiny = tiny_leovl(seed=0, tokenizer=tok)
    lora = _lora_count(64, 256, 2, 4, 2)
    fourier = (64 * 64 + 64) + (64 * 64 + 64)  # F = d: the Fourier feature has the model's width
    w = 32 * 2  # W: d/2 x 2, learned
    assert tiny.num_trainable_parameters() == lora + fourier + w + 64
    assert count_trainable_parameters(tiny_qwen25vl_config(), tiny.config)["trainable"] == lora + fourier + w + 64
    # The paper's "66M" learnable parameters of LEO-VL at 7B (§4): LoRA + position embedding + anchor.
    cfg7 = LeoVLConfig(base_model="Qwen/Qwen2.5-VL-7B-Instruct", hidden_size=3584)
    counts = count_trainable_parameters(qwen25vl_7b_config(), cfg7)
    assert counts["llm"] == _lora_count(3584, 18944, 28, 28, 4) == 40_370_176
    assert counts["fourier_mlp"] == 2 * (3584 * 3584 + 3584) and counts["fourier_w"] == 1792 * 2
    assert counts["trainable"] == 66_074_624 and round(counts["trainable"] / 1e6) == 66
    assert 8.2e9 < counts["base_total"] < 8.4e9
    # The former width (2 x 128 Fourier features, fixed W) gave 54.1M.
    old = LeoVLConfig.from_dict({**cfg7.to_dict(), "grid": {"fourier_features": 128}, "fourier_w": "fixed"})
    assert count_trainable_parameters(qwen25vl_7b_config(), old)["trainable"] == 54_143_488
    no_xy = tiny_leovl(seed=0, tokenizer=tok, pos_xy="none")
    assert not hasattr(no_xy.heads, "fourier_mlp") and no_xy.num_trainable_parameters() == lora + 64


def test_fourier_w_learns_or_stays_fixed(tok):
    for mode in ("learned", "fixed"):
        model = tiny_leovl(seed=4, tokenizer=tok, fourier_w=mode)
        scene = random_scene(model, 300, seed=5)
        W0 = model.heads.fourier_w.detach().clone()
        opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2, weight_decay=0.0)
        for _ in range(3):
            lp, n = model.sequence_logprobs([scene], [Q], ["red"])
            opt.zero_grad()
            (-lp.sum()).backward()
            opt.step()
        moved = not torch.equal(model.heads.fourier_w.detach().to(W0.dtype), W0)
        assert moved == (mode == "learned"), mode
        assert ("fourier_w" in model.heads.state_dict()) == (mode == "learned")  # a fixed W is not saved
    with pytest.raises(ValueError, match="fourier_w"):
        LeoVLConfig(base_model="x", hidden_size=64, fourier_w="frozen")


def test_full_mode_trains_llm_but_not_vision(tok):
    model = tiny_leovl(seed=7, tokenizer=tok)
    scene = random_scene(model, 100, seed=1)
    before = model.score([scene], [Q], ["red"])
    model.set_trainable("full")
    assert model.peft_model is None and model.config.train_mode == "full"
    torch.testing.assert_close(model.score([scene], [Q], ["red"]), before)  # merging LoRA (B = 0) is exact
    names = {id(p): k for k, p in model.model.named_parameters()}
    trainable = {names.get(id(p), "heads") for p in model.trainable_parameters()}
    assert any("embed_tokens" in k for k in trainable) and any("layers.1.mlp" in k for k in trainable)
    assert not any("visual" in k for k in trainable)
    model.set_trainable("adapter")
    assert model.peft_model is not None
    assert model.num_trainable_parameters() == tiny_leovl(seed=7, tokenizer=tok).num_trainable_parameters()
    with pytest.raises(ValueError, match="adapter"):
        model.set_trainable("lora")


def test_maps_from_another_model_are_rejected(model, tok):
    other = tiny_leovl(seed=9, tokenizer=tok)
    with pytest.raises(ValueError, match="encoder"):
        model.scene_tokens(random_scene(other, 50), Q)
    small = tiny_leovl(seed=0, tokenizer=tok, hidden_size=32)
    with pytest.raises(ValueError, match="32-dim"):
        model.scene_tokens(random_scene(small, 50), Q)
    with pytest.raises(ValueError, match="lengths must match"):
        model.score([None], [Q, Q], ["a", "b"])


def test_history_turns_add_the_earlier_answers_as_targets(tok):
    chat = tiny_leovl(seed=2, tokenizer=tok, dialogue_format="chat")
    scene = random_scene(chat, seed=4)
    q = SceneQuery("qa", "Is there a lamp?", history=[("What colour is the bed?", "red")])
    last, n_last = chat.sequence_logprobs([scene], [q], ["yes"])
    both, n_both = chat.sequence_logprobs([scene], [q], ["yes"], history_turns=True)
    assert int(n_last) == len(chat.prompts.answer_ids("yes")) and int(n_both) == int(n_last) + 2  # "red" + <|im_end|>
    # the extra term is log p("red<|im_end|>" | scene, first question): score the first turn alone
    first, _ = chat.sequence_logprobs([scene], [SceneQuery("qa", "What colour is the bed?")], ["red"])
    assert float((both - last).detach()) == pytest.approx(float(first.detach()), abs=1e-4)
