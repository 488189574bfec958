"""Flask app (JSON API under ``/api/`` and one HTML page) and a small threaded server.

Every request parameter is checked against a whitelist before any work: unknown names,
wrong types, values out of range and oversized requests get a 4xx JSON answer
``{"error": message, "status": code, "field": name-or-null}``.  Nothing from a request is
used as a path, unpickled or evaluated; the app has no static-file route.  POST bodies
must be ``application/json`` (so a web page on another origin cannot send them without a
CORS preflight, which this server never grants), and when bound to a loopback address the
``Host`` header must name a loopback host (no DNS rebinding).

One computation runs at a time per view (the models are shared).  At most
``Limits.max_waiting_requests`` computing requests wait for it, each at most
``Limits.max_wait_seconds``; others get a 503 at once.  Work whose client has disconnected
is abandoned: a waiting request is dropped when its turn comes, a running one stops at
its next forward pass of the model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

from captum_rap.insights.data import VisualizerData
from captum_rap.insights.methods import RequestError

__all__ = ["create_app", "start_server", "ServerHandle"]

_LOG = logging.getLogger("captum_rap.insights")
_INT_RE = re.compile(r"^[0-9]{1,9}$")
_LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
MAX_BODY_BYTES = 64 * 1024

# the views are AttributionVisualizer objects; the server needs only their data side (and
# does not import the visualizer, which imports this module to serve itself)
Views = Union[VisualizerData, Mapping[str, VisualizerData]]


class ClientGone(Exception):
    """The client of a request disconnected; its computation is abandoned."""


def _client_gone(environ: Mapping[str, Any]) -> bool:
    """Whether the request's connection was closed by the client (werkzeug's server gives
    the socket; other servers: never)."""
    sock = environ.get("werkzeug.socket")
    if sock is None or not hasattr(socket, "MSG_DONTWAIT"):  # (no non-blocking peek on Windows)
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False  # open, nothing to read
    except (OSError, ValueError, AttributeError):
        return True


class _WorkGate:
    """Admission to a view's computations (see the module docstring)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self.waiting = 0

    @contextlib.contextmanager
    def hold(self, vis: VisualizerData, model: Any, environ: Mapping[str, Any]) -> Iterator[None]:
        lim = vis.limits
        if not vis.lock.acquire(blocking=False):
            with self._mutex:
                if self.waiting >= lim.max_waiting_requests:
                    raise RequestError(f"the server is busy ({self.waiting} request(s) already waiting); retry "
                                       "later", status=503)
                self.waiting += 1
            try:
                acquired = vis.lock.acquire(timeout=lim.max_wait_seconds)
            finally:
                with self._mutex:
                    self.waiting -= 1
            if not acquired:
                raise RequestError(f"the server is busy (waited {lim.max_wait_seconds:g} s); retry later",
                                   status=503)
        handle = None
        try:
            if _client_gone(environ):
                raise ClientGone()

            def stop_if_gone(*_: Any) -> None:
                if _client_gone(environ):
                    raise ClientGone()

            if hasattr(model, "register_forward_pre_hook"):
                handle = model.register_forward_pre_hook(stop_if_gone)
            yield
        finally:
            if handle is not None:
                handle.remove()
            vis.lock.release()


def _as_views(views: Views) -> Dict[str, VisualizerData]:
    if isinstance(views, VisualizerData):
        return {"main": views}
    out = dict(views)
    if not out:
        raise ValueError("no views to serve")
    for k, v in out.items():
        if not isinstance(k, str) or not re.match(r"^[A-Za-z0-9_-]{1,40}$", k):
            raise ValueError(f"view names must be 1-40 letters, digits, '-' or '_', got {k!r}")
        if not isinstance(v, VisualizerData):
            raise TypeError(f"view {k!r} is not an AttributionVisualizer")
    return out


def create_app(views: Views, local_only: bool = True):
    r"""Build the Flask app of the Insights UI.

    Args:
        views (AttributionVisualizer or dict of str to AttributionVisualizer): what to
            serve; several named views (e.g. an image and a text model) appear in one page.
        local_only (bool, optional): accept only requests whose ``Host`` header names a
            loopback address (set False when deliberately serving on a network
            interface). Default: True

    Returns:
        flask.Flask: the app (``app.test_client()`` for tests).

    Examples::

        >>> app = create_app({"images": vis})
        >>> app.test_client().get("/api/config").get_json()["views"][0]["name"]
        'images'
    """
    from flask import Flask, Response, jsonify, request
    from werkzeug.exceptions import HTTPException

    from captum_rap.insights._page import PAGE

    vmap = _as_views(views)
    gates = {name: _WorkGate() for name in vmap}
    gate_of = {id(v): gates[name] for name, v in vmap.items()}
    app = Flask("captum_rap.insights", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["JSON_SORT_KEYS"] = False

    # ---- errors ------------------------------------------------------------------------
    def error(message: str, status: int, field: Optional[str] = None):
        resp = jsonify({"error": message, "status": status, "field": field})
        resp.status_code = status
        return resp

    @app.errorhandler(RequestError)
    def _request_error(exc: RequestError):
        return error(exc.message, exc.status, exc.field)

    @app.errorhandler(ClientGone)
    def _client_gone_error(exc: ClientGone):
        _LOG.info("client disconnected from %s: work abandoned", request.path[:80])
        return error("the client disconnected; the computation was abandoned", 503)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        messages = {
            404: f"no such endpoint: {request.path[:80]!r}; the API lives under /api/ (config, methods, "
                 "examples, attribute, acd)",
            405: f"{request.method} is not allowed on {request.path[:80]}",
            413: f"request body too large (limit {MAX_BODY_BYTES - 1} bytes)",
        }
        return error(messages.get(exc.code or 500, exc.description or exc.name), exc.code or 500)

    @app.errorhandler(Exception)
    def _internal_error(exc: Exception):  # pragma: no cover - a bug, not a bad request
        _LOG.exception("internal error")
        return error(f"internal error ({type(exc).__name__}); see the server log", 500)

    @app.before_request
    def _check_host():
        if local_only:
            host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith("[") \
                else (request.host or "").split("]")[0] + "]"
            if host not in _LOOPBACK:
                raise RequestError("this server only answers requests addressed to a loopback host "
                                   "(127.0.0.1 / localhost)", status=400)
        return None

    @app.after_request
    def _headers(resp):
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["X-Frame-Options"] = "SAMEORIGIN"
        return resp

    # ---- parameter parsing -----------------------------------------------------------
    def query(allowed: List[str]) -> Dict[str, str]:
        for k in request.args:
            if k not in allowed:
                raise RequestError(f"unknown query parameter {k[:40]!r}; allowed: {', '.join(allowed)}", field=k)
            if len(request.args.getlist(k)) > 1:
                raise RequestError(f"query parameter {k!r} given more than once", field=k)
        return {k: request.args[k] for k in request.args}

    def q_int(params: Dict[str, str], name: str, default: Optional[int], lo: int, hi: int) -> Optional[int]:
        if name not in params or params[name] == "":
            return default
        raw = params[name]
        if not _INT_RE.match(raw):
            raise RequestError(f"query parameter {name!r} must be a non-negative integer, got {raw[:40]!r}",
                               field=name)
        v = int(raw)
        if not lo <= v <= hi:
            raise RequestError(f"query parameter {name!r} must lie in [{lo}, {hi}], got {v}", field=name)
        return v

    def body(allowed: List[str], required: List[str]) -> Dict[str, Any]:
        ctype = (request.mimetype or "").lower()
        if ctype != "application/json":
            raise RequestError("POST bodies must be JSON with 'Content-Type: application/json'", status=415)
        raw = request.get_data(cache=False)
        # a chunked body has no Content-Length: werkzeug stops reading at the limit, so a
        # body that reaches it is too large (it would otherwise be parsed truncated)
        if len(raw) >= MAX_BODY_BYTES:
            raise RequestError(f"request body too large (limit {MAX_BODY_BYTES - 1} bytes)", status=413)
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise RequestError(f"malformed JSON body: {exc}") from None
        except RecursionError:
            raise RequestError("malformed JSON body: nested too deeply") from None
        if not isinstance(data, dict):
            raise RequestError("the JSON body must be an object")
        for k in data:
            if k not in allowed:
                raise RequestError(f"unknown field {str(k)[:40]!r}; allowed: {', '.join(allowed)}", field=str(k))
        for k in required:
            if k not in data:
                raise RequestError(f"missing field {k!r}", field=k)
        return data

    def view_of(name: Any) -> VisualizerData:
        if name is None:
            return next(iter(vmap.values()))
        if not isinstance(name, str) or name not in vmap:
            raise RequestError(f"unknown view {str(name)[:60]!r}; views: {', '.join(vmap)}", field="view")
        return vmap[name]

    def model_of(vis: VisualizerData, value: Any) -> int:
        if value is None:
            return 0
        if isinstance(value, str) and _INT_RE.match(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(vis.models):
            raise RequestError(f"'model' must be an index in [0, {len(vis.models) - 1}], got {str(value)[:60]!r}",
                               field="model")
        return value

    def example_index(vis: VisualizerData, value: Any, field: str) -> int:
        n = len(vis.examples)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
            raise RequestError(f"'{field}' must hold example indices in [0, {n - 1}], got {str(value)[:60]!r}",
                               field=field)
        return value

    # ---- routes --------------------------------------------------------------------------
    @app.get("/")
    def index():
        query([])
        return Response(PAGE, mimetype="text/html")

    @app.get("/api/config")
    def config():
        query([])
        out = []
        for name, vis in vmap.items():
            out.append({
                "name": name, "title": vis.title, "kind": vis.input_kind(),
                "models": [f"{i}: {type(m).__name__}" for i, m in enumerate(vis.models)],
                "classes": vis.classes,
                "features": [{"name": f.name, "type": f.visualization_type()} for f in vis.features],
                "num_examples": len(vis.examples), "use_label_for_attr": vis.use_label_for_attr,
                "methods": [s.name for s in vis.method_specs()],
            })
        lim = next(iter(vmap.values())).limits
        return jsonify({"views": out, "limits": dict(vars(lim))})

    @app.get("/api/methods")
    def methods():
        p = query(["view"])
        vis = view_of(p.get("view"))
        return jsonify({"view": p.get("view") or next(iter(vmap)), "methods": [s.to_json() for s in vis.method_specs()]})

    def _examples():
        p = query(["view", "model", "prediction", "true_class", "predicted_class", "offset", "limit", "top_k"])
        vis = view_of(p.get("view"))
        m = model_of(vis, p.get("model"))
        lim = vis.limits
        pred_filter = p.get("prediction", "all") or "all"
        if pred_filter not in ("all", "correct", "incorrect"):
            raise RequestError(f"'prediction' must be all, correct or incorrect, got {pred_filter[:40]!r}",
                               field="prediction")
        n_cls = max(len(vis.classes), 1)
        true_c = q_int(p, "true_class", None, 0, n_cls - 1)
        pred_c = q_int(p, "predicted_class", None, 0, 10 ** 9)
        offset = q_int(p, "offset", 0, 0, 10 ** 9)
        limit = q_int(p, "limit", 12, 1, lim.max_page_size)
        top_k = q_int(p, "top_k", 3, 1, lim.max_top_k)
        with gate_of[id(vis)].hold(vis, vis.models[m], request.environ):
            infos = [vis.prediction_info(m, i, top_k) for i in range(len(vis.examples))]
        keep = []
        for info in infos:
            if true_c is not None and info["label"] != true_c:
                continue
            if pred_c is not None and info["predicted"] != pred_c:
                continue
            if pred_filter != "all" and info["correct"] is not (pred_filter == "correct"):
                continue
            keep.append(info)
        page = keep[offset:offset + limit]  # type: ignore[operator]
        for info in page:
            info["originals"] = vis.originals(info["index"])
        return jsonify({"total": len(keep), "offset": offset, "examples": page,
                        "labels_present": sorted({i["label"] for i in infos if i["label"] is not None}),
                        "predicted_present": sorted({i["predicted"] for i in infos if i["predicted"] is not None})})

    app.add_url_rule("/api/examples", "examples", _examples, methods=["GET"])
    app.add_url_rule("/api/predictions", "predictions", _examples, methods=["GET"])

    @app.post("/api/attribute")
    def attribute():
        data = body(["view", "model", "method", "args", "examples", "target"], ["method", "examples"])
        vis = view_of(data.get("view"))
        m = model_of(vis, data.get("model"))
        ex = data["examples"]
        if not isinstance(ex, list) or not ex:
            raise RequestError("'examples' must be a non-empty list of example indices", field="examples")
        if len(ex) > vis.limits.max_examples_per_request:
            raise RequestError(f"at most {vis.limits.max_examples_per_request} examples per request, got {len(ex)}",
                               status=413, field="examples")
        idx = [example_index(vis, v, "examples") for v in ex]
        if len(set(idx)) != len(idx):
            raise RequestError("'examples' lists an example twice", field="examples")
        method = data["method"]
        if not isinstance(method, str):
            raise RequestError(f"'method' must be a method name, got {str(method)[:60]!r}", field="method")
        vis.method(method)  # unknown names: 400 before waiting
        with gate_of[id(vis)].hold(vis, vis.models[m], request.environ):
            result = vis.attribute(m, method, data.get("args"), idx, data.get("target"))
        return jsonify(result)

    @app.post("/api/acd")
    def acd():
        data = body(["view", "model", "args", "example", "target"], ["example"])
        vis = view_of(data.get("view"))
        m = model_of(vis, data.get("model"))
        i = example_index(vis, data["example"], "example")
        with gate_of[id(vis)].hold(vis, vis.models[m], request.environ):
            result = vis.acd(m, data.get("args"), i, data.get("target"))
        return jsonify(result)

    return app


class ServerHandle:
    """A running server: ``port``, ``url`` and ``stop()``."""

    def __init__(self, server: Any, thread: Optional[threading.Thread]) -> None:
        self._server = server
        self.thread = thread
        self.port = int(server.server_port)
        self.host = server.host
        self.url = f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '') else self.host}:{self.port}/"

    def stop(self) -> None:
        """Shut the server down (and join its thread)."""
        self._server.shutdown()
        self._server.server_close()
        if self.thread is not None:
            self.thread.join(timeout=10)


def start_server(views: Views, host: str = "127.0.0.1", port: int = 0, blocking: bool = True,
                 debug: bool = False) -> ServerHandle:
    r"""Serve ``views`` with a threaded werkzeug server.

    Args:
        views: an :class:`AttributionVisualizer` or a dict of named ones.
        host (str, optional): interface to bind. Default: ``"127.0.0.1"``
        port (int, optional): TCP port, 0 = a free one. Default: 0
        blocking (bool, optional): serve in this thread until Ctrl-C (then return a
            stopped handle); else from a daemon thread. Default: True
        debug (bool, optional): log every request. Default: False

    Returns:
        ServerHandle: ``port``, ``url``, ``stop()``.
    """
    from werkzeug.serving import make_server

    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in [0, 65535], got {port!r}")
    local = host in _LOOPBACK
    app = create_app(views, local_only=local)
    if not debug:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server(host, port, app, threaded=True)
    if blocking:
        handle = ServerHandle(server, None)
        print(f"captum_rap insights: serving on {handle.url} (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return handle
    thread = threading.Thread(target=server.serve_forever, name="captum-rap-insights", daemon=True)
    thread.start()
    handle = ServerHandle(server, thread)
    print(f"captum_rap insights: serving on {handle.url}", flush=True)
    return handle
