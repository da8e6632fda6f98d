"""Answer metrics: EM / EM-R with LEO's answer cleaning, and n-gram caption metrics.

``clean_answer`` reproduces LEO's ``clean_answer`` (embodied-generalist, data/data_utils.py):
lower-case; keep ``[a-z0-9,'\\s\\-:]``; fix LEO's list of common typos; spell out the numbers
0-20 (and 23, "none" -> "zero"); drop "a", "an", "the" before a word.

Two exact-match rules, both reported and labelled:
- ``EM`` (:func:`answer_match`): the cleaned prediction is one of the cleaned references
  (order does not matter), as MSR3D's ``answer_match_strict`` and the usual EM.
- ``EM-LEO`` (:func:`answer_match_leo`): LEO's evaluator (embodied-generalist,
  evaluator/scanqa_eval.py ``ScanQAEvaluator.answer_match``, also used for SQA3D) walks the
  references in order and returns at the first one that equals the prediction (EM 1) or
  where one of the two, spaces removed, contains the other (EM 0). So with references
  ["dark brown", "brown"] the prediction "brown" gets EM 0 from LEO and 1 here: LEO's EM
  depends on the order of the references.
- ``EM-R`` ("refined", the same under both rules): some reference equals the prediction or
  one contains the other, spaces removed.

Two deliberate differences from LEO's code: its "ç"/"’" replacements run after the
character filter has already deleted those characters, so they are no-ops and are left out
here; and an empty (cleaned) prediction only matches an empty reference (EM 1, as LEO),
where LEO's substring test counts "" as contained in every reference and so gives EM-R
credit to an empty answer (its EM is 0 there either way, so EM-LEO is exact). An empty
reference (kept at conversion, as LEO keeps it) is contained in every prediction: EM-R 1,
as LEO.

BLEU-4, METEOR, ROUGE-L and CIDEr come from pycocoevalcap (METEOR runs Java). By default
the texts are cleaned with ``clean_answer`` first and split on spaces, as LEO scores
ScanQA; ``tokenizer="ptb"`` uses the COCO PTB tokenizer instead (Java as well).
"""
from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import threading
from collections import defaultdict, deque
from typing import Literal, Mapping, Sequence

_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
            "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]

# (pattern, replacement) in LEO's order; the order matters ("none" -> "zero" before digits).
_RULES: list[tuple[re.Pattern, str]] = [(re.compile(p), r) for p, r in [
    (r"[ ]+$", ""), (r"^[ ]+", ""), (r" {2,}", " "), (r"\.[ ]{2,}", ". "),
    (r"[^a-zA-Z0-9,'\s\-:]+", ""),
    (r"\bletf\b", "left"), (r"\blet\b", "left"), (r"\btehre\b", "there"), (r"\brigth\b", "right"),
    (r"\brght\b", "right"), (r"\bbehine\b", "behind"), (r"\btv\b", "TV"), (r"\bchai\b", "chair"),
    (r"\bwasing\b", "washing"), (r"\bwaslked\b", "walked"), (r"\boclock\b", "o'clock"),
    (r"\bo'[ ]+clock\b", "o'clock"),
    (r"\b0\b", "zero"), (r"\bnone\b", "zero"),
    *[(rf"\b{i}\b", w) for i, w in enumerate(_NUMBERS) if i > 0],
    (r"\b23\b", "twenty-three"),
    (r"\b([a-zA-Z]+)([0-9])\b", r"\g<1>"),  # "mat2" -> "mat"
    (r"\ba\b ([a-zA-Z]+)", r"\g<1>"), (r"\ban\b ([a-zA-Z]+)", r"\g<1>"), (r"\bthe\b ([a-zA-Z]+)", r"\g<1>"),
    (r"\bbackwards\b", "backward"),
]]


def clean_answer(text: str) -> str:
    """LEO's answer normalisation (see module docstring)."""
    text = text.lower()
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    return text


def _contains(pred: str, ref: str) -> bool:
    """One of the two, spaces removed, contains the other (LEO's refined match)."""
    p, r = "".join(pred.split()), "".join(ref.split())
    return bool(p) and (p in r or r in p)


def answer_match(pred: str, refs: Sequence[str]) -> tuple[int, int]:
    """(EM, EM-R) of a cleaned prediction against cleaned references, each 0 or 1:
    EM when the prediction is among the references, whatever their order (an empty
    prediction matches an empty reference)."""
    if pred in refs:
        return 1, 1
    return 0, int(any(_contains(pred, r) for r in refs))


def answer_match_leo(pred: str, refs: Sequence[str]) -> tuple[int, int]:
    """(EM, EM-R) as LEO's evaluator computes them: the references in order, the first
    exact (1, 1) or partial (0, 1) match decides (see the module docstring)."""
    for ref in refs:
        if pred == ref:  # both empty included, as LEO
            return 1, 1
        if not pred:  # LEO stops here too, with EM-R credit for the empty answer (see the module docstring)
            return 0, 0
        if _contains(pred, ref):
            return 0, 1
    return 0, 0


def exact_match_scores(predictions: Sequence[str], references: Sequence[Sequence[str]],
                       qtypes: Sequence[str | None] | None = None) -> dict[str, dict[str, float]]:
    """EM, EM-LEO and EM-R in percent, overall and per question type (where given).

    Returns ``{"overall": {"EM", "EM-LEO", "EM-R", "count"}, "<qtype>": {...}, ...}``.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    qtypes = qtypes if qtypes is not None else [None] * len(predictions)
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for pred, refs, qtype in zip(predictions, references, qtypes):
        pred, refs = clean_answer(pred), [clean_answer(r) for r in refs]
        em, emr = answer_match(pred, refs)
        em_leo = answer_match_leo(pred, refs)[0]
        for key in ("overall", qtype) if qtype else ("overall",):
            s = sums[key]
            s[0], s[1], s[2], s[3] = s[0] + em, s[1] + em_leo, s[2] + emr, s[3] + 1
    return {k: {"EM": 100.0 * em / n, "EM-LEO": 100.0 * leo / n, "EM-R": 100.0 * emr / n, "count": n}
            for k, (em, leo, emr, n) in sorted(sums.items(), key=lambda kv: (kv[0] != "overall", kv[0]))}


def _require_java() -> None:
    if shutil.which("java") is None:
        raise RuntimeError("METEOR (and the PTB tokenizer) need Java: install a JRE, e.g. "
                           "`apt-get install default-jre-headless`, or drop them with ngram=False")


def _one_line(text: str) -> str:
    """Whitespace (newlines of multi-line plans included) collapsed to single spaces, as LEO's
    evaluator does before scoring; METEOR's stdin protocol is one command per line."""
    return " ".join(text.replace("|||", " ").split())


class MeteorProcess:
    """pycocoevalcap's METEOR 1.5 jar over its stdin protocol (``SCORE ||| refs ||| hyp`` per
    segment, then one ``EVAL`` line), with a read timeout and an error that names METEOR's
    own message. Hand-written over pycocoevalcap's ``Meteor``: that wrapper keeps its lock
    after any error, so its ``__del__`` then blocks the interpreter's exit forever, and a read
    whose line never comes waits forever."""

    def __init__(self, timeout_s: float = 300.0) -> None:
        import pycocoevalcap.meteor.meteor as coco

        self.timeout_s = timeout_s
        self.process = subprocess.Popen(["java", "-jar", "-Xmx2G", coco.METEOR_JAR, "-", "-", "-stdio", "-l", "en",
                                         "-norm"], cwd=os.path.dirname(os.path.abspath(coco.__file__)),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, bufsize=1)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._errors: deque[str] = deque(maxlen=5)
        threading.Thread(target=self._pump, args=(self.process.stdout, self._lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.process.stderr, self._errors.append), daemon=True).start()

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in stream:
            sink(line.strip())
        sink(None)  # end of stream: the process ended

    def _fail(self, why: str) -> RuntimeError:
        self.close()
        said = "; ".join(e for e in self._errors if e)
        return RuntimeError(f"METEOR failed: {why}" + (f" (METEOR said: {said})" if said else ""))

    def _ask(self, line: str, answers: int) -> list[str]:
        if self.process.poll() is not None:
            raise self._fail(f"the Java process has ended (exit code {self.process.returncode})")
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except OSError as exc:
            raise self._fail(f"cannot write to the Java process: {exc}") from None
        out = []
        for _ in range(answers):
            try:
                got = self._lines.get(timeout=self.timeout_s)
            except queue.Empty:
                raise self._fail(f"no answer within {self.timeout_s:.0f} s") from None
            if got is None:
                raise self._fail("the Java process ended")
            out.append(got)
        return out

    def compute_score(self, gts: Mapping[str, Sequence[str]], res: Mapping[str, Sequence[str]]) -> float:
        """Corpus METEOR (0..1) of one hypothesis per id against its references."""
        stats = [self._ask(" ||| ".join(["SCORE", *map(_one_line, gts[k]), _one_line(res[k][0])]), 1)[0]
                 for k in res]
        replies = self._ask(" ||| ".join(["EVAL", *stats]), len(stats) + 1)
        try:
            return float(replies[-1])
        except ValueError:
            raise self._fail(f"unexpected reply {replies[-1]!r}") from None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            try:
                stream.close()
            except OSError:
                pass

    def __del__(self) -> None:
        if getattr(self, "process", None) is not None:
            self.close()


class NgramScorer:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr (x100). One METEOR Java process serves every
    ``score`` call of the scorer (starting the JVM is the slow part); a METEOR failure is a
    RuntimeError naming it, never a hang."""

    def __init__(self, tokenizer: Literal["clean", "ptb"] = "clean") -> None:
        if tokenizer not in ("clean", "ptb"):
            raise ValueError(f"tokenizer must be 'clean' or 'ptb', got {tokenizer!r}")
        _require_java()
        self.tokenizer = tokenizer
        self._meteor = MeteorProcess()

    def _tokenize(self, predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]):
        if self.tokenizer == "ptb":
            from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

            ptb = PTBTokenizer()
            return (ptb.tokenize({k: [{"caption": r} for r in references[k]] for k in predictions}),
                    ptb.tokenize({k: [{"caption": v}] for k, v in predictions.items()}))
        # Empty strings break METEOR's Java protocol; a lone "." scores like an empty answer.
        return ({k: [_one_line(clean_answer(r)) or "." for r in references[k]] for k in predictions},
                {k: [_one_line(clean_answer(v)) or "."] for k, v in predictions.items()})

    def score(self, predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
        """Corpus-level metrics over the ids of ``predictions``."""
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        if not predictions:
            raise ValueError("no predictions to score")
        missing = [k for k in predictions if k not in references or not references[k]]
        if missing:
            raise ValueError(f"{len(missing)} predictions have no references, e.g. id {missing[0]!r}")
        gts, res = self._tokenize(predictions, references)
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out = {f"BLEU-{i + 1}": 100.0 * b for i, b in enumerate(bleu)}
        out["METEOR"] = 100.0 * self._meteor.compute_score(gts, res)
        out["ROUGE-L"] = 100.0 * float(Rouge().compute_score(gts, res)[0])
        out["CIDEr"] = 100.0 * float(Cider().compute_score(gts, res)[0])
        return out


def caption_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                    tokenizer: Literal["clean", "ptb"] = "clean") -> dict[str, float]:
    """One-off :meth:`NgramScorer.score` (starts and ends its own METEOR process)."""
    return NgramScorer(tokenizer).score(predictions, references)
