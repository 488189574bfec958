"""Captum Insights successor: an attribution explorer in the browser.

``AttributionVisualizer``, ``Batch``, ``ImageFeature``, ``TextFeature`` and
``GeneralFeature`` take the same constructor arguments as those of Captum <= 0.8's
``captum.insights`` (removed in Captum 0.9), so existing code ports by changing the
import.  The UI is one HTML page with a JSON API under ``/api/`` served by Flask
(``pip install "captum-rap[insights]"``); it offers RAP, the LRP presets, CLRP, SGLRP,
CD/ACD and Captum's Integrated Gradients, Saliency, Input x Gradient and Occlusion.

Examples::

    >>> from captum_rap.insights import AttributionVisualizer, Batch, ImageFeature
    >>> vis = AttributionVisualizer(models=[model], classes=names,
    ...                             features=[ImageFeature("Photo", [lambda x: x * 0], [normalize])],
    ...                             dataset=[Batch(images, labels)])
    >>> vis.serve()                      # http://127.0.0.1:<port>/ until Ctrl-C
"""

from captum_rap.insights.features import BaseFeature, GeneralFeature, ImageFeature, TextFeature
from captum_rap.insights.methods import Limits, RequestError
from captum_rap.insights.visualizer import AttributionVisualizer, Batch


def create_app(views, local_only: bool = True):
    """Flask app serving ``views`` (see :func:`captum_rap.insights.server.create_app`)."""
    from captum_rap.insights.server import create_app as _create_app

    return _create_app(views, local_only=local_only)


def serve(views, port: int = 0, host: str = "127.0.0.1", blocking: bool = True, debug: bool = False):
    """Serve several named views (``{"images": vis1, "text": vis2}``) in one page.

    Returns:
        ServerHandle: ``port``, ``url`` and ``stop()`` (stopped already when blocking).
    """
    from captum_rap.insights.server import start_server

    return start_server(views, host=host, port=port, blocking=blocking, debug=debug)


__all__ = [
    "AttributionVisualizer",
    "Batch",
    "BaseFeature",
    "ImageFeature",
    "TextFeature",
    "GeneralFeature",
    "Limits",
    "RequestError",
    "create_app",
    "serve",
]
