"""``python -m captum_rap``: the ``captum-rap`` command line (:mod:`captum_rap.cli`).

The names below were defined here before the command line moved to :mod:`captum_rap.cli`;
they stay importable from ``captum_rap.__main__``.
"""

import sys

from captum_rap.cli.common import DEFAULT_LRP_PRESET, METHODS, CLIError, DemoSettings, parse_method, resolve_target
from captum_rap.cli.demo import _toy_image, _toy_model, run_demo
from captum_rap.cli.explain import run_explain
from captum_rap.cli.loading import Explained, load_image, load_model
from captum_rap.cli.main import build_parser, main
from captum_rap.visualization import acd_figure, heatmap_figure
from captum_rap.zoo import IMAGENET_MEAN, IMAGENET_STD, imagenet_preprocess

__all__ = ["main", "build_parser", "run_demo", "run_explain", "load_model", "load_image", "Explained",
           "CLIError", "DemoSettings", "parse_method", "resolve_target", "METHODS", "DEFAULT_LRP_PRESET",
           "heatmap_figure", "acd_figure", "imagenet_preprocess", "IMAGENET_MEAN", "IMAGENET_STD",
           "_toy_image", "_toy_model"]

if __name__ == "__main__":
    sys.exit(main())
