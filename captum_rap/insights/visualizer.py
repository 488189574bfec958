"""``AttributionVisualizer``: an Insights view (the data side, :class:`VisualizerData`)
with its serving and notebook rendering; ``Batch`` is re-exported from
:mod:`captum_rap.insights.data`."""

from __future__ import annotations

from typing import Any

from captum_rap.insights.data import Batch, VisualizerData

__all__ = ["Batch", "AttributionVisualizer"]


class AttributionVisualizer(VisualizerData):
    r"""Interactive attribution explorer (the successor of Captum Insights).

    Same constructor as ``captum.insights.AttributionVisualizer`` of Captum <= 0.8, so
    existing code ports by changing the import.  The UI (one HTML page and a JSON API under
    ``/api/``) offers RAP, the LRP presets, CLRP, SGLRP, CD/ACD and Captum's Integrated
    Gradients, Saliency, Input x Gradient and Occlusion; see :meth:`serve` and
    :meth:`render`.

    Args:
        models (nn.Module or list of nn.Module): the classifier(s); used unchanged (no
            switch to eval mode, no moves; requests run one at a time).
        classes (list of str): class names, in the order of the model outputs.
        features (BaseFeature or list of BaseFeature): one per model input tensor.
        dataset (iterable of Batch): examples to show; read lazily, at most
            ``limits.max_dataset_examples`` examples.
        score_func (callable, optional): maps model outputs to class scores (e.g.
            ``softmax``). Default: None (softmax of the outputs)
        use_label_for_attr (bool, optional): explain the true label by default (else the
            predicted class). Default: True
        title (str, optional): keyword only: title of the view in the UI.
        limits (Limits, optional): keyword only: bounds on the work per request.

    Examples::

        >>> from captum_rap.insights import AttributionVisualizer, Batch, ImageFeature
        >>> vis = AttributionVisualizer(
        ...     models=[model], classes=names,
        ...     features=[ImageFeature("Photo", baseline_transforms=[lambda x: x * 0],
        ...                            input_transforms=[normalize])],
        ...     dataset=[Batch(images, labels)])
        >>> port = vis.serve(blocking=False)      # http://127.0.0.1:<port>/
        >>> vis.render()                          # in a notebook
    """

    _server: Any = None  # the background server of serve() / render()

    def serve(self, port: int = 0, host: str = "127.0.0.1", blocking: bool = True, debug: bool = False) -> int:
        r"""Serve the UI over HTTP.

        Args:
            port (int, optional): TCP port; 0 picks a free one. Default: 0
            host (str, optional): interface to bind. Default: ``"127.0.0.1"`` (this machine
                only; the server has no authentication, think twice before ``"0.0.0.0"``).
            blocking (bool, optional): serve until interrupted (Ctrl-C); else serve from a
                background thread and return at once. Default: True
            debug (bool, optional): log every request and include tracebacks of internal
                errors in the server log. Default: False

        Returns:
            int: the port (printed as well).

        Examples::

            >>> port = vis.serve(blocking=False)
            >>> print(f"http://127.0.0.1:{port}/")
            >>> vis.stop()
        """
        from captum_rap.insights.server import start_server

        if self._server is not None and not blocking:
            return self._server.port
        server = start_server({_slug(self.title): self}, host=host, port=port, blocking=blocking, debug=debug)
        if not blocking:
            self._server = server
        return server.port

    def stop(self) -> None:
        """Stop the background server started by :meth:`serve` / :meth:`render`."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def render(self, height: int = 760) -> str:
        r"""Show the UI in a notebook.

        With IPython: starts a background server on 127.0.0.1 (once) and displays the page
        in an inline iframe.  Without IPython: starts nothing and returns a static HTML
        snapshot (originals and top predictions of the first examples) to save or embed.

        Args:
            height (int, optional): iframe height in pixels. Default: 760

        Returns:
            str: the server URL (IPython) or the HTML snapshot (no IPython).

        Examples::

            >>> vis.render()      # in Jupyter
        """
        try:
            from IPython.display import IFrame, display
        except ImportError:
            return self.snapshot_html()
        port = self.serve(blocking=False)
        url = f"http://127.0.0.1:{port}/"
        display(IFrame(url, width="100%", height=int(height)))
        return url

    def snapshot_html(self, model_index: int = 0, limit: int = 8) -> str:
        """A self-contained static HTML page with the originals and top-3 predictions of the
        first ``limit`` examples (no server needed)."""
        from html import escape

        parts = [f"<html><head><meta charset='utf-8'><title>{escape(self.title)}</title></head><body>",
                 f"<h2>{escape(self.title)}: snapshot</h2><p>Interactive view: "
                 f"<code>vis.serve()</code> and open the printed address.</p><div>"]
        for i in range(min(limit, len(self.examples))):
            info = self.prediction_info(model_index, i, 3)
            parts.append("<div style='display:inline-block;margin:6px;vertical-align:top;width:240px'>")
            for o in self.originals(i):
                if "png" in o:
                    parts.append(f"<img width='224' src='data:image/png;base64,{o['png']}'>")
                elif "words" in o:
                    parts.append(f"<p>{escape(' '.join(o['words']))}</p>")
            label = info["label_name"]
            parts.append(f"<div>label: {escape(label) if label else '-'}</div><ol>")
            for p in info["predictions"]:
                parts.append(f"<li>{escape(p['name'])}: {100 * p['score']:.1f}%</li>")
            parts.append("</ol></div>")
        parts.append("</div></body></html>")
        return "".join(parts)


def _slug(title: str) -> str:
    keep = "".join(c.lower() if c.isalnum() else "-" for c in title).strip("-")
    return keep or "main"
