"""The demo's self-contained HTML report (``captum-rap demo``); the figures it embeds are
drawn by :mod:`captum_rap.visualization`."""

from __future__ import annotations

import base64
import datetime
import html
import os
import platform
from typing import Dict, List, Tuple

import numpy as np

from .common import DemoSettings, _Timings
from .loading import Explained


def _png_data_uri(path: str) -> str:
    with open(path, "rb") as fh:
        return "data:image/png;base64," + base64.b64encode(fh.read()).decode("ascii")


def _write_report(path: str, ex: Explained, photo_desc: str, settings: DemoSettings,
                  top5: List[Tuple[str, int, float]], target: int, logit: float,
                  checks: List[Dict[str, str]], timings: _Timings, figures: List[str]) -> None:
    """A self-contained HTML page (figures embedded as data URIs)."""
    import torch

    import captum

    from .. import __version__

    e = html.escape
    rows_top = "".join(f"<tr><td>{k + 1}</td><td>{e(n)}</td><td>{i}</td><td>{p:.4f}</td></tr>"
                       for k, (n, i, p) in enumerate(top5))
    rows_checks = "".join(f"<tr><td>{e(c['method'])}</td><td>{e(c['check'])}</td><td>{e(c['value'])}</td></tr>"
                          for c in checks)
    rows_time = "".join(f"<tr><td>{e(n)}</td><td>{w:.2f}</td><td>{c:.2f}</td></tr>" for n, w, c in timings.rows)
    rows_time += f"<tr><th>total</th><th>{timings.wall:.2f}</th><th>{timings.cpu:.2f}</th></tr>"
    set_rows = [
        ("model", ex.description), ("image", photo_desc),
        ("input size", f"{settings.image_size} px"),
        ("target", f"{ex.names[target]} ({target}), logit {logit:+.4f}"),
        ("LRP presets", ", ".join(settings.lrp_presets)),
        ("z^B input bounds (box presets, CLRP, SGLRP)", "per-channel ImageNet bounds" if not np.isscalar(ex.low)
         else f"[{ex.low:.4f}, {ex.high:.4f}]"),
        ("CLRP / SGLRP base", "zplus_box"),
        ("ACD", f"{settings.acd_size} px input, sweep_dim {settings.acd_sweep}, "
                f"percentile_include {settings.acd_percentile:g}, num_iters {settings.acd_iters}"),
        ("versions", f"captum_rap {__version__}, captum {captum.__version__}, torch {torch.__version__}, "
                     f"Python {platform.python_version()}"),
        ("machine", f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"),
        ("written", datetime.datetime.now().isoformat(timespec="seconds")),
    ]
    rows_set = "".join(f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in set_rows)
    imgs = "".join(f'<figure><img src="{_png_data_uri(p)}" alt="{e(os.path.basename(p))}">'
                   f"<figcaption>{e(os.path.basename(p))}</figcaption></figure>" for p in figures)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>captum_rap demo report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
figure {{ margin: 1em 0; }} figcaption {{ color: #666; font-size: 0.9em; }}
</style></head><body>
<h1>captum_rap demo</h1>
<p>{e(ex.description)} on {e(photo_desc)}: what makes the model predict
<b>{e(ex.names[target])}</b>?  Rows of the first figure: RAP (relevant = positive, irrelevant =
negative), LRP presets, CLRP1 and SGLRP (contrastive), and the groups of one ACD level
(coloured by their CD score); the second figure shows the CD score of every block and the
ACD hierarchy level by level.</p>
<h2>Prediction (top 5)</h2>
<table><tr><th>#</th><th>class</th><th>index</th><th>probability</th></tr>{rows_top}</table>
<h2>Figures</h2>{imgs}
<h2>Relevance checks</h2>
<table><tr><th>method</th><th>check</th><th>value</th></tr>{rows_checks}</table>
<h2>Settings</h2><table>{rows_set}</table>
<h2>Timings</h2>
<table><tr><th>step</th><th>wall s</th><th>CPU s (process)</th></tr>{rows_time}</table>
</body></html>
"""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
