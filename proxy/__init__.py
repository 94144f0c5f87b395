"""Stained Glass Transform Proxy: an OpenAI-compatible service that sends only obfuscated embeddings upstream."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from proxy.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """The application factory (imported lazily: ``proxy.sgt`` and ``proxy.settings`` load without the web stack)."""
    from proxy.app import build_app

    return build_app(settings)
