"""Long-document upsampling (``data.long_docs``): more of the training tokens from long documents.

Wikipedia's median article is a few thousand tokens, so "32k training" on it mostly trains short-range
attention. Fu et al. (2024, "Data Engineering for Scaling Language Models to 128K Context") keep the
domain mix and raise the share of long documents. Two ways here, to reach ``target_share`` of the training
tokens from documents of at least ``min_tokens`` tokens (EOS included):

- ``repeat``: each long document is read ``factor`` times per epoch (``factor`` >= 1);
- ``subsample``: each short document is kept with probability ``factor`` (< 1), long ones always.

``factor`` comes from the long-token share of a sample: the first ``sample_documents`` training documents
in source order, the same on every rank and worker (``LongDocPlan.measure``). A fractional part is drawn
per document from ``(seed, epoch, global document index)`` alone, so the copies a document gets do not
depend on how many ranks or workers read the data. A kept document and its copies pass through a second
shuffle buffer, so copies are spread apart rather than packed side by side.

Exactly once, counted: with the plan, an epoch reads every document the number of times the plan gives it
(``copies``), and each stream counts what it added and dropped (``long_doc_copies``, ``short_docs_dropped``,
logged at the end of each epoch). The plan is part of the data state: a checkpoint resumes only under the
same plan.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from kiwi.errors import ConfigError

MODES = ("repeat", "subsample")


@dataclass(frozen=True)
class LongDocPlan:
    min_tokens: int
    target_share: float
    mode: str
    factor: float  # repeat: reads per long document; subsample: keep probability of a short one
    sample_share: float  # long-token share of the sample the factor was measured on

    @staticmethod
    def check(long_docs: Any) -> dict | None:
        """The ``data.long_docs`` option as a dict, or a one-line ``ConfigError`` naming what is wrong."""
        if long_docs is None:
            return None
        if not isinstance(long_docs, dict) or set(long_docs) - {"min_tokens", "target_share", "mode",
                                                                   "sample_documents"}:
            raise ConfigError(f"data.long_docs: expected null or {{min_tokens, target_share, mode, "
                              f"sample_documents}}, got {long_docs!r}")
        opt = {"mode": "repeat", "sample_documents": 512, **long_docs}
        if not isinstance(opt.get("min_tokens"), int) or opt["min_tokens"] < 2:
            raise ConfigError(f"data.long_docs.min_tokens must be an integer >= 2, got {opt.get('min_tokens')!r}")
        share = opt.get("target_share")
        if not isinstance(share, int | float) or not 0 < share < 1:
            raise ConfigError(f"data.long_docs.target_share must be in (0, 1), got {share!r}")
        if opt["mode"] not in MODES:
            raise ConfigError(f"data.long_docs.mode must be one of {', '.join(MODES)}, got {opt['mode']!r}")
        if not isinstance(opt["sample_documents"], int) or opt["sample_documents"] < 1:
            raise ConfigError(f"data.long_docs.sample_documents must be >= 1, got {opt['sample_documents']!r}")
        return opt

    @classmethod
    def from_lengths(cls, lengths: list[int], min_tokens: int, target_share: float, mode: str) -> LongDocPlan:
        """The factor that takes the sample's long-token share to ``target_share``."""
        long = sum(n for n in lengths if n >= min_tokens)
        short = sum(n for n in lengths if n < min_tokens)
        where = f"data.long_docs: in the first {len(lengths)} training documents"
        if long == 0:
            raise ConfigError(f"{where}, none has >= {min_tokens} tokens: nothing to upsample "
                              "(lower min_tokens or raise sample_documents)")
        share = long / (long + short)
        if short == 0 or share >= target_share:
            raise ConfigError(f"{where}, {share:.1%} of the tokens are already in documents of >= {min_tokens} "
                              f"tokens, at least target_share={target_share}: nothing to do (drop data.long_docs)")
        # long * r / (long * r + short) = t  <=>  r = t * short / ((1 - t) * long); subsample keeps 1 / r
        ratio = target_share * short / ((1 - target_share) * long)
        return cls(min_tokens, float(target_share), mode, ratio if mode == "repeat" else 1 / ratio, share)

    @classmethod
    def measure(cls, lengths, option: dict) -> LongDocPlan:
        return cls.from_lengths(list(lengths), option["min_tokens"], option["target_share"], option["mode"])

    def copies(self, n_tokens: int, seed: int, epoch: int, index: int) -> int:
        """How many times the document with global ``index`` and ``n_tokens`` tokens is read this epoch."""
        long = n_tokens >= self.min_tokens
        if self.mode == "repeat" and not long:
            return 1
        if self.mode == "subsample" and long:
            return 1
        whole, frac = divmod(self.factor, 1.0)
        draw = random.Random(f"kiwi-long-docs:{seed}:{epoch}:{index}").random()
        return int(whole) + (draw < frac)

    def expected_share(self) -> float:
        """The long-token share the plan gives the sample it was measured on (``target_share`` up to rounding)."""
        long, short = self.sample_share, 1 - self.sample_share
        if self.mode == "repeat":
            long *= self.factor
        else:
            short *= self.factor
        return long / (long + short)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["expected_share"] = round(self.expected_share(), 6)
        return out
