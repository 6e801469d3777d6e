"""Layer-selection strategies: each maps (n_source, n_target, options) to the source index of every
target slot. Kept free of weights so a bad choice fails in milliseconds, not after loading a model."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import Any

from kiwi.upscale.plan import TRAINABLE_MODES, LayerPlan

# The importance scores a plan can rank layers by (measured in kiwi.upscale.importance).
METRICS = ("block_influence", "angular")

COMMON_OPTIONS = ("identity_init", "trainable")


def _fail(strategy: str, option: str, message: str) -> ValueError:
    return ValueError(f"layer_selection (strategy={strategy!r}): option '{option}': {message}")


def _int(strategy: str, option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(strategy, option, f"must be an integer, got {value!r}")
    return value


def spread_evenly(k: int, n: int) -> list[int]:
    """k distinct indices in range(n) (k <= n) spaced as evenly as possible through depth."""
    return [((2 * i + 1) * n) // (2 * k) for i in range(k)]


def _copies_per_layer(extra: int, ranked: Sequence[int]) -> dict[int, int]:
    """Distribute ``extra`` duplicates over the layers in ``ranked`` (best first): every layer gets
    extra // len(ranked) copies and the first extra % len(ranked) one more."""
    base, rem = divmod(extra, len(ranked))
    return {layer: base + (1 if r < rem else 0) for r, layer in enumerate(ranked)}


def _expand(n_source: int, copies: dict[int, int]) -> tuple[int, ...]:
    """Each source layer followed directly by its duplicates."""
    out: list[int] = []
    for s in range(n_source):
        out += [s] * (1 + copies.get(s, 0))
    return tuple(out)


def _growth(strategy: str, n_source: int, n_target: int) -> int:
    if n_target < n_source:
        raise _fail(
            strategy,
            "n_target",
            f"n_target={n_target} < n_source={n_source}; this strategy only grows the model",
        )
    return n_target - n_source


def _interleave(n_source: int, n_target: int) -> tuple[int, ...]:
    extra = _growth("interleave", n_source, n_target)
    if extra == 0:
        return tuple(range(n_source))
    rem = extra % n_source
    # Layers getting the remainder copy are spread evenly, the rest follow in index order.
    chosen = spread_evenly(rem, n_source) if rem else []
    ranked = chosen + [s for s in range(n_source) if s not in set(chosen)]
    return _expand(n_source, _copies_per_layer(extra, ranked))


def _solar(n_source: int, n_target: int, m: int | None = None) -> tuple[int, ...]:
    if m is None:
        if n_target % 2:
            raise _fail(
                "solar",
                "n_target",
                f"n_target={n_target} is odd but SOLAR keeps 2*n_source - 2*m layers; use an even n_target "
                "or the 'explicit' strategy",
            )
        m = n_source - n_target // 2
    m = _int("solar", "m", m)
    if not 0 <= m < n_source:
        raise _fail(
            "solar",
            "m",
            f"m={m} must be in 0..{n_source - 1} (needs n_source < n_target={n_target} <= 2*n_source)",
        )
    if 2 * n_source - 2 * m != n_target:
        raise _fail(
            "solar",
            "m",
            f"m={m} gives 2*{n_source}-2*{m}={2 * n_source - 2 * m} layers, not n_target={n_target}",
        )
    return tuple(range(n_source - m)) + tuple(range(m, n_source))


def _stack(n_source: int, n_target: int) -> tuple[int, ...]:
    _growth("stack", n_source, n_target)
    return tuple(j % n_source for j in range(n_target))


def _llama_pro(n_source: int, n_target: int) -> tuple[int, ...]:
    extra = _growth("llama_pro", n_source, n_target)
    if extra == 0:
        return tuple(range(n_source))
    n_groups = min(extra, n_source)
    base, rem = divmod(n_source, n_groups)  # array_split convention: larger groups first
    ends, start = [], 0
    for g in range(n_groups):
        start += base + (1 if g < rem else 0)
        ends.append(start - 1)
    return _expand(n_source, _copies_per_layer(extra, ends))


def _explicit(
    n_source: int,
    n_target: int | None,
    layers: Sequence[int] | None = None,
    slices: Sequence[Sequence[int]] | None = None,
) -> tuple[int, ...]:
    if (layers is None) == (slices is None):
        raise _fail("explicit", "layers", "give exactly one of 'layers' (source indices) or 'slices'")
    if layers is not None:
        if isinstance(layers, str) or not isinstance(layers, Sequence):
            raise _fail("explicit", "layers", f"must be a list of source layer indices, got {layers!r}")
        if len(layers) == 0:
            raise _fail("explicit", "layers", "is empty")
        sources = [_int("explicit", "layers", s) for s in layers]
        option = "layers"
    else:
        if isinstance(slices, str) or not isinstance(slices, Sequence):
            raise _fail(
                "explicit", "slices", f"must be a list of [start, end_exclusive] pairs, got {slices!r}"
            )
        if len(slices) == 0:
            raise _fail("explicit", "slices", "is empty")
        sources = []
        for i, pair in enumerate(slices):
            if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise _fail("explicit", "slices", f"entry {i} must be [start, end_exclusive], got {pair!r}")
            start, end = (_int("explicit", "slices", v) for v in pair)
            if not 0 <= start < end <= n_source:
                raise _fail(
                    "explicit",
                    "slices",
                    f"entry {i} [{start}, {end}] must satisfy 0 <= start < end <= n_source={n_source}",
                )
            sources += range(start, end)
        option = "slices"
    bad = [s for s in sources if not 0 <= s < n_source]
    if bad:
        raise _fail("explicit", option, f"index {bad[0]} out of range 0..{n_source - 1}")
    if n_target is not None and n_target != len(sources):
        raise _fail("explicit", option, f"lists {len(sources)} layers but n_target={n_target}")
    return tuple(sources)


def _importance(
    n_source: int,
    n_target: int,
    scores: Sequence[float] | None = None,
    direction: str = "most",
    metric: str | None = None,
    calibration: Mapping[str, Any] | None = None,
) -> tuple[int, ...]:
    del calibration  # provenance only: how the caller measured ``scores``
    if metric is not None and metric not in METRICS:
        raise _fail("importance", "metric", f"must be one of {list(METRICS)}, got {metric!r}")
    extra = _growth("importance", n_source, n_target)
    if scores is None:
        raise _fail(
            "importance",
            "scores",
            "missing; compute them with kiwi.upscale.importance.layer_scores(model, batches)",
        )
    if isinstance(scores, str) or not isinstance(scores, Sequence) or len(scores) == 0:
        raise _fail("importance", "scores", f"must be a non-empty list of floats, got {scores!r}")
    if len(scores) != n_source:
        raise _fail(
            "importance", "scores", f"has {len(scores)} entries, expected one per source layer ({n_source})"
        )
    if not all(isinstance(s, Real) and not isinstance(s, bool) for s in scores):
        raise _fail("importance", "scores", "all entries must be numbers")
    if direction not in ("most", "least"):
        raise _fail("importance", "direction", f"must be 'most' or 'least', got {direction!r}")
    if extra == 0:
        return tuple(range(n_source))
    sign = -1.0 if direction == "most" else 1.0
    ranked = sorted(range(n_source), key=lambda s: (sign * float(scores[s]), s))
    return _expand(n_source, _copies_per_layer(extra, ranked))


def _none(n_source: int, n_target: int) -> tuple[int, ...]:
    if n_target != n_source:
        raise _fail(
            "none", "n_target", f"must equal n_source={n_source} (the base unchanged), got {n_target}"
        )
    return tuple(range(n_source))


STRATEGIES: dict[str, tuple[Callable[..., tuple[int, ...]], tuple[str, ...]]] = {
    "interleave": (_interleave, ()),
    "solar": (_solar, ("m",)),
    "stack": (_stack, ()),
    "llama_pro": (_llama_pro, ()),
    "explicit": (_explicit, ("layers", "slices")),
    "importance": (_importance, ("scores", "direction", "metric", "calibration")),
    "none": (_none, ()),
}
# LLaMA Pro trains only the inserted identity blocks; every other strategy defaults to plain copies.
DEFAULTS = {"llama_pro": {"identity_init": True, "trainable": "new"}}


def strategy_options(strategy: str) -> tuple[str, ...]:
    """Option names a strategy accepts besides n_target / param_budget; the one check of a strategy name."""
    if strategy is None:
        raise ValueError(f"layer_selection: option 'strategy' is missing; valid: {sorted(STRATEGIES)}")
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(
            f"layer_selection: option 'strategy': unknown strategy {strategy!r}; valid: {sorted(STRATEGIES)}"
        )
    return COMMON_OPTIONS + STRATEGIES[strategy][1]


def check_options(strategy: str, options: Mapping[str, Any]) -> None:
    """The one validation of a strategy name and its option names (make_plan and plan_from_config)."""
    valid = strategy_options(strategy)
    unknown = sorted(str(k) for k in options if k not in valid)
    if unknown:
        raise _fail(strategy, unknown[0], f"unknown option; valid options for {strategy!r}: {list(valid)} "
                    "(and the size: n_target or param_budget)")


def make_plan(
    strategy: str,
    n_source: int,
    n_target: int | None = None,
    *,
    identity_init: bool | None = None,
    trainable: str | None = None,
    **options: Any,
) -> LayerPlan:
    """Build a validated LayerPlan. ``n_target`` may be None only for 'explicit' (length of the list)
    and 'none' (n_source)."""
    check_options(strategy, options)
    n_source = _int(strategy, "n_source", n_source)
    if n_source < 1:
        raise _fail(strategy, "n_source", f"must be >= 1, got {n_source}")
    if n_target is None:
        if strategy == "none":
            n_target = n_source
        elif strategy != "explicit":
            raise _fail(strategy, "n_target", "is required (or set param_budget)")
    else:
        n_target = _int(strategy, "n_target", n_target)
        if n_target < 1:
            raise _fail(strategy, "n_target", f"must be >= 1, got {n_target}")
    defaults = DEFAULTS.get(strategy, {})
    identity = defaults.get("identity_init", False) if identity_init is None else identity_init
    mode = defaults.get("trainable", "all") if trainable is None else trainable
    if not isinstance(identity, bool):
        raise _fail(strategy, "identity_init", f"must be true or false, got {identity!r}")
    if mode not in TRAINABLE_MODES:
        raise _fail(strategy, "trainable", f"must be one of {list(TRAINABLE_MODES)}, got {mode!r}")

    fn = STRATEGIES[strategy][0]
    sources = fn(n_source, n_target, **options)
    seen: set[int] = set()
    ident = []
    for s in sources:
        ident.append(identity and s in seen)
        seen.add(s)
    return LayerPlan(
        strategy=strategy,
        n_source=n_source,
        sources=sources,
        identity_init=tuple(ident),
        trainable=mode,
        options={"identity_init": identity, "trainable": mode, **_plain(options)},
    )


def _plain(value: Any) -> Any:
    """Options as JSON-friendly builtins (OmegaConf containers and tuples become lists/dicts)."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (isinstance(value, Sequence) and not isinstance(value, str)):
        return [_plain(v) for v in value]
    if isinstance(value, Real) and not isinstance(value, (bool, int)):
        return float(value)
    return value
