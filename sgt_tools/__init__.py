"""Offline SGT tooling: build, train, evaluate and assemble SGT files; export models.

Imports :mod:`proxy.sgt` (the runtime: file format, transform, prompt rendering),
never the reverse: serving and the container image need none of this package, nor
its extra requirements (``requirements-tools.txt``). The CLI is ``python -m sgt_tools``
(``python -m proxy.sgt`` is an alias of it).
"""
