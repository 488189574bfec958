"""What the ``captum-rap`` commands share: constants, the user-error exception, the
parsing of ``--method`` / ``--target`` (also used by :mod:`captum_rap.quantus`), the demo's
settings, progress and timings."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

DEMO_OUT = "captum_rap_demo"
LITE0 = "efficientnet-lite0"
METHODS = ("rap", "lrp", "clrp1", "clrp2", "sglrp", "acd")
DEFAULT_LRP_PRESET = "epsilon_gamma_box"
DEFAULT_SIZE = 224
OUTPUT_KINDS = (".png", ".npy", ".pt", ".json")


class CLIError(Exception):
    """A user error: ``main`` prints the message on one line and returns exit status 2."""


# ----------------------------------------------------------------------------- helpers
def _use_agg() -> None:
    """Select matplotlib's file backend (the CLI never opens windows)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")


# ----------------------------------------------------------------------------- targets
def resolve_target(spec: str, logits, names: Sequence[str]) -> int:
    """``pred`` (the arg-max), a class index, or a class name (case-insensitive; a unique
    substring is enough) -> class index.

    Raises:
        CLIError: index out of range, no or several matching names.
    """
    n = int(logits.shape[1])
    s = str(spec).strip()
    if s.lower() in ("pred", "predicted", ""):
        return int(logits.argmax(1)[0])
    if re.fullmatch(r"-?[0-9]+", s):  # ASCII digits only ("²".isdigit() is True)
        t = int(s)
        if not 0 <= t < n:
            raise CLIError(f"target {t} is out of range: the model has {n} classes (0..{n - 1})")
        return t
    low = s.lower()
    exact = [i for i, name in enumerate(names) if name.lower() == low]
    if len(exact) == 1:
        return exact[0]
    partial = [i for i, name in enumerate(names) if low in name.lower()]
    if len(partial) == 1:
        return partial[0]
    if not partial:
        raise CLIError(f"no class is named {s!r} (give pred, a class index or a class name)")
    shown = ", ".join(f"{i} {names[i]!r}" for i in partial[:8])
    raise CLIError(f"{s!r} matches {len(partial)} classes ({shown}{', ...' if len(partial) > 8 else ''}); "
                   "be more specific or give the index")


def parse_method(spec: str) -> Tuple[str, Optional[str]]:
    """``rap``, ``lrp``, ``lrp:PRESET``, ``clrp1``, ``clrp2``, ``sglrp``, ``acd`` ->
    ``(method, preset)``.

    Raises:
        CLIError: unknown method or LRP preset.
    """
    from ..composites import PRESETS

    s = spec.strip().lower()
    method, _, preset = s.partition(":")
    if method not in METHODS:
        raise CLIError(f"unknown method {spec!r}; choose one of rap, lrp[:PRESET], clrp1, clrp2, sglrp, acd")
    if method != "lrp":
        if preset:
            raise CLIError(f"method {method} takes no preset (only lrp:PRESET does)")
        return method, None
    preset = (preset or DEFAULT_LRP_PRESET).replace("-", "_")
    if preset not in PRESETS:
        raise CLIError(f"unknown LRP preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    return method, preset


def _box_for(preset: Optional[str], box: Dict[str, Any]) -> Dict[str, Any]:
    """The z^B bounds for a preset that has a box rule (others do not take them)."""
    from ..composites import preset_keywords

    return {k: v for k, v in box.items() if k in preset_keywords(preset)} if preset else {}


# ----------------------------------------------------------------------------- demo
@dataclass
class DemoSettings:
    """What ``captum-rap demo`` computes (the defaults are the command's settings).

    Attributes:
        toy: seeded toy CNN on a synthetic image instead of EfficientNet-Lite0.
        photo: scikit-image photo name.
        image_size: input size for the propagation methods.
        acd_size: input size for ACD (coarser, ACD is many forward passes).
        acd_sweep: ACD block size in pixels.
        acd_percentile: ACD's ``percentile_include``.
        acd_iters: ACD's growth steps.
        lrp_presets: LRP presets shown.
        progress: progress bars (tqdm) on stderr.
    """

    toy: bool = False
    photo: str = "chelsea"
    image_size: int = 224
    acd_size: int = 112
    acd_sweep: int = 16
    acd_percentile: float = 90.0
    acd_iters: int = 3
    lrp_presets: Tuple[str, ...] = ("epsilon_plus", "epsilon_gamma_box")
    progress: bool = True


class _Steps:
    """Progress over named steps: a tqdm bar when tqdm is installed and ``enabled``,
    silent otherwise; ``say`` prints without breaking the bar."""

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="step", leave=False, disable=None)
            except ImportError:
                self.bar = None

    def start(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(label)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def say(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclass
class _Timings:
    """Wall-clock and process CPU seconds per named step."""

    rows: List[Tuple[str, float, float]] = field(default_factory=list)

    def measure(self, name: str, fn: Callable[[], Any]) -> Any:
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        self.rows.append((name, time.perf_counter() - w0, time.process_time() - c0))
        return result

    @property
    def wall(self) -> float:
        return sum(r[1] for r in self.rows)

    @property
    def cpu(self) -> float:
        return sum(r[2] for r in self.rows)
