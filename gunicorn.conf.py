"""gunicorn settings for the proxy (override any of them on the command line).

gthread workers: each worker loads the SGT once (mmap'd, so workers share the
table's pages) and serves requests from a pool of threads. Streams can be long,
so the graceful timeout lets them finish on SIGTERM.
"""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8600")
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
preload_app = False  # one SGT per worker, loaded in the worker
timeout = 120
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "60"))
keepalive = 5
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'
errorlog = "-"
loglevel = "info"
