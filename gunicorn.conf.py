"""gunicorn settings for the proxy (override any of them on the command line).

gthread workers: each worker loads the SGT once (mmap'd, so workers share the
table's pages) and serves requests from a pool of threads. Streams can be long,
so the graceful timeout lets them finish on SIGTERM. The worker class is
gunicorn's gthread with two changes (proxy/gunicorn_worker.py): a request
reaches a thread only once it has arrived in full (GUNICORN_REQUEST_DEADLINE
bounds the wait), and a response's headers leave in the same send as its
first body bytes.

Logging: when SGP_LOGGING_CONFIG_FILE is set, gunicorn's own loggers (access
and error) use the same YAML dictConfig as the proxy, so every line has the
same format and the access log carries the correlation id.

Metrics: prometheus-client's multiprocess mode. PROMETHEUS_MULTIPROC_DIR (a
fresh temporary directory when unset) is set here, in the master, before any
worker imports prometheus_client; it is emptied when this file loads, a dead worker's live
gauges are dropped, and a directory made here is removed at exit.
"""

import gc
import os
import shutil
import tempfile
from pathlib import Path

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8600")
worker_class = "proxy.gunicorn_worker.ThreadWorker"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
preload_app = False  # one SGT per worker, loaded in the worker
control_socket_disable = True  # no runtime-control socket: nothing uses it, and it needs a writable $HOME
timeout = 120
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "60"))
keepalive = 5


def _request_deadline() -> float:
    """GUNICORN_REQUEST_DEADLINE: seconds a request's headers and body have to arrive in full (408 after).

    The worker buffers each request in its event loop and gives a thread only
    a complete one (proxy/gunicorn_worker.py), so a slow client holds no
    thread; this bounds how long it holds a connection slot and its buffer.
    """
    raw = os.environ.get("GUNICORN_REQUEST_DEADLINE", "60")
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise SystemExit(f"GUNICORN_REQUEST_DEADLINE: must be a number of seconds above 0, not {raw!r}")
    return value


import proxy.gunicorn_worker  # noqa: E402 - the worker class, configured here in the master before the fork

proxy.gunicorn_worker.ThreadWorker.request_deadline = _request_deadline()
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None  # empty: no access log at all (its line costs ~0.25 ms)
# the path without its query string (%(U)s, not the request line %(r)s): a query may carry anything
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'
errorlog = "-"
loglevel = "info"


def _logconfig_dict() -> dict:
    """The YAML dictConfig named by SGP_LOGGING_CONFIG_FILE, or {} for gunicorn's own format."""
    path = os.environ.get("SGP_LOGGING_CONFIG_FILE")
    if not path:
        return {}
    import yaml

    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


logconfig_dict = _logconfig_dict()

_OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sgp-prometheus-")
METRICS_DIR = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
# Start from an empty metrics directory (files of an earlier run would be summed in); it must exist
# before the module import below, which creates the master's metric files there.
METRICS_DIR.mkdir(parents=True, exist_ok=True)
for _stale in METRICS_DIR.glob("*.db"):
    _stale.unlink()


def _import_shared_modules() -> None:
    """Import the proxy and its libraries (torch, transformers, flask, pydantic, ...) here, in the master.

    Workers are forked from the master, so the pages of every module imported
    here are shared copy-on-write instead of each worker importing its own
    copy. Only modules: nothing runs, no torch thread pool starts, and the SGT
    is still loaded by each worker (``preload_app = False``), mmap-shared.
    GUNICORN_PRELOAD_MODULES=0 turns this off.
    """
    if os.environ.get("GUNICORN_PRELOAD_MODULES", "1").lower() in ("0", "false", "no"):
        return
    import proxy.app  # noqa: F401 - imported for its side effect: shared module pages


_import_shared_modules()
gc.freeze()  # what the master holds now is never collected: left out of every collection, in the master and its forks


def post_worker_init(worker) -> None:
    """Freeze what start-up left alive (the app, the SGT runtime, the tokenizer) out of the garbage collector.

    Why: those objects live as long as the worker; without this every full
    collection walks them all again (~0.1 ms less per request at p50 on a
    2-core VM, measured with interleaved pairs; docs/benchmarks.md).
    """
    if _metrics_server is not None:  # a fork's copy of the master's metrics socket: only the master serves it
        _metrics_server.socket.close()
    gc.collect()
    gc.freeze()


_metrics_server = None  # the master's /metrics server (SGP_METRICS_PORT), if any


def when_ready(server) -> None:
    """SGP_METRICS_PORT: /metrics on its own port, served by a thread of the master.

    Why the master: it lives as long as the server, there is one of it whatever
    WEB_CONCURRENCY is, and it takes no requests, so a scrape never waits behind
    a transform. It reads the same multiprocess files as the workers' /metrics
    did. A bad setting is left to the workers, which stop start-up naming it.
    """
    from proxy.settings import Settings, SettingsError

    try:
        port = Settings.from_env().metrics_port
    except SettingsError:
        return
    if port is None:
        return
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(METRICS_DIR))
    api = server.cfg.bind[0] if server.cfg.bind else ""
    host = "0.0.0.0" if api.startswith(("unix:", "fd:")) else api.rpartition(":")[0].strip("[]") or "0.0.0.0"
    global _metrics_server
    try:
        _metrics_server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise SystemExit(f"SGP_METRICS_PORT: cannot listen on {host}:{port}: {exc}") from None
    server.log.info("metrics on http://%s:%d/metrics (the API's address, its own port)", host, port)


def child_exit(server, worker) -> None:
    """Drop the live gauges of a worker that exited (its counters stay in the sums)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, str(METRICS_DIR))


def on_exit(server) -> None:
    if _OWN_METRICS_DIR:
        shutil.rmtree(METRICS_DIR, ignore_errors=True)
