"""The layer plan: which source layer fills each target slot, as plain, serialisable data.

A plan is decided before any weights are touched, so it can be validated, printed, saved next to a
checkpoint and exported to mergekit without loading a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRAINABLE_MODES = ("all", "new")


@dataclass(frozen=True)
class LayerPlan:
    """Target layer j is a copy of source layer ``sources[j]``; ``identity_init[j]`` zeroes its
    residual contribution (o_proj and down_proj) so the block starts as the identity."""

    strategy: str
    n_source: int
    sources: tuple[int, ...]
    identity_init: tuple[bool, ...]
    trainable: str = "all"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(int(s) for s in self.sources))
        object.__setattr__(self, "identity_init", tuple(bool(b) for b in self.identity_init))
        object.__setattr__(self, "options", dict(self.options))
        if self.n_source < 1:
            raise ValueError(f"LayerPlan: n_source must be >= 1, got {self.n_source}")
        if not self.sources:
            raise ValueError("LayerPlan: sources is empty; the target model needs at least one layer")
        if len(self.identity_init) != len(self.sources):
            raise ValueError(
                f"LayerPlan: identity_init has {len(self.identity_init)} entries but sources has "
                f"{len(self.sources)}"
            )
        bad = [s for s in self.sources if not 0 <= s < self.n_source]
        if bad:
            raise ValueError(
                f"LayerPlan: source layer index {bad[0]} out of range for a {self.n_source}-layer source "
                f"(valid: 0..{self.n_source - 1})"
            )
        if self.trainable not in TRAINABLE_MODES:
            raise ValueError(f"LayerPlan: trainable must be one of {TRAINABLE_MODES}, got {self.trainable!r}")

    @property
    def n_target(self) -> int:
        return len(self.sources)

    @property
    def new_layers(self) -> tuple[int, ...]:
        """Target slots holding the 2nd+ occurrence of a source layer (the duplicates)."""
        seen: set[int] = set()
        out = []
        for j, s in enumerate(self.sources):
            if s in seen:
                out.append(j)
            seen.add(s)
        return tuple(out)

    @property
    def trainable_layers(self) -> tuple[bool, ...]:
        if self.trainable == "all":
            return (True,) * self.n_target
        new = set(self.new_layers)
        return tuple(j in new for j in range(self.n_target))

    @property
    def preserves_function(self) -> bool:
        """True when the non-identity layers are the whole source stack in order, so that (with
        identity blocks contributing 0) the target computes exactly the source function."""
        kept = [s for s, ident in zip(self.sources, self.identity_init, strict=True) if not ident]
        return kept == list(range(self.n_source))

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "n_source": self.n_source,
            "n_target": self.n_target,
            "sources": list(self.sources),
            "identity_init": list(self.identity_init),
            "trainable": self.trainable,
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerPlan:
        required = ("strategy", "n_source", "sources", "identity_init")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"LayerPlan.from_dict: missing key(s) {missing}")
        plan = cls(
            strategy=data["strategy"],
            n_source=int(data["n_source"]),
            sources=tuple(data["sources"]),
            identity_init=tuple(data["identity_init"]),
            trainable=data.get("trainable", "all"),
            options=dict(data.get("options") or {}),
        )
        if "n_target" in data and int(data["n_target"]) != plan.n_target:
            raise ValueError(
                f"LayerPlan.from_dict: n_target={data['n_target']} != len(sources)={plan.n_target}"
            )
        return plan

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> LayerPlan:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LayerPlan:
        path = Path(path)
        try:
            return cls.from_json(path.read_text())
        except (json.JSONDecodeError, ValueError) as err:
            raise ValueError(f"{path}: not a valid layer plan: {err}") from err

    # ---- human / tool views --------------------------------------------------------------------
    def table(self) -> str:
        """One row per target layer, so a plan can be eyeballed in logs before training starts."""
        new = set(self.new_layers)
        trainable = self.trainable_layers
        head = f"{'target':>6} {'source':>6} {'kind':<9} {'identity':<8} {'trainable':<9}"
        rows = [
            f"LayerPlan strategy={self.strategy} {self.n_source}->{self.n_target} layers, "
            f"trainable={self.trainable}, preserves_function={self.preserves_function}",
            head,
            "-" * len(head),
        ]
        for j, s in enumerate(self.sources):
            kind = "duplicate" if j in new else "original"
            rows.append(
                f"{j:>6} {s:>6} {kind:<9} {'yes' if self.identity_init[j] else 'no':<8} "
                f"{'yes' if trainable[j] else 'no':<9}"
            )
        return "\n".join(rows)

    def slices(self) -> list[tuple[int, int]]:
        """Consecutive runs of source indices as half-open [start, end) ranges."""
        runs: list[tuple[int, int]] = []
        for s in self.sources:
            if runs and runs[-1][1] == s:
                runs[-1] = (runs[-1][0], s + 1)
            else:
                runs.append((s, s + 1))
        return runs

    def to_mergekit_yaml(self, base_model: str, dtype: str) -> str:
        """mergekit passthrough config reproducing ``sources`` from ``base_model`` (the path or hub id the
        base was loaded from) in ``dtype`` (the model's, e.g. ``float32``); identity init is not expressible."""
        model = json.dumps(str(base_model))  # a JSON string is a valid, safely quoted YAML scalar
        lines = [f"# kiwi layer plan: strategy={self.strategy}, {self.n_source} -> {self.n_target} layers"]
        ident = [j for j, b in enumerate(self.identity_init) if b]
        if ident:
            lines += [
                "# NOTE: identity_init cannot be expressed in mergekit passthrough merges.",
                f"# Target layers {ident} must additionally get self_attn.o_proj and mlp.down_proj",
                "# zeroed to match kiwi.upscale.upscale (which does this itself).",
            ]
        lines.append("slices:")
        for start, end in self.slices():
            lines += [
                "  - sources:",
                f"      - model: {model}",
                f"        layer_range: [{start}, {end}]",
            ]
        lines += ["merge_method: passthrough", f"dtype: {dtype}"]
        return "\n".join(lines) + "\n"
