"""The setup every tutorial shares: the matplotlib backend, fast mode, the output folder
and ``save``.  A tutorial imports it first (``from _common import FAST, OUT, save``), then
``matplotlib.pyplot``.

Run as a script (``python tutorials/NN_name.py``, from any folder), a tutorial's own folder
is on ``sys.path``, so ``_common`` is found; a notebook opened from ``tutorials/`` (Jupyter's
default working folder for it) finds it the same way.

* ``CAPTUM_RAP_FAST=1``: small inputs and few samples (``FAST``; what the test suite runs).
* ``CAPTUM_RAP_TUTORIAL_OUT=DIR``: where the figures go (``OUT``; default ``tutorials/_out/``).
"""

import os
import sys

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # scripts write files; notebooks show the figures inline
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

__all__ = ["FAST", "OUT", "save"]

FAST = os.environ.get("CAPTUM_RAP_FAST", "0") == "1"
OUT = os.environ.get("CAPTUM_RAP_TUTORIAL_OUT", os.path.join(os.path.dirname(os.path.abspath(__file__)), "_out"))
os.makedirs(OUT, exist_ok=True)


def save(fig, name: str) -> None:
    """Write a figure to OUT (and keep it open in a notebook, where it is shown)."""
    path = os.path.join(OUT, name)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    print("figure:", path)
    if "ipykernel" not in sys.modules:
        plt.close(fig)
