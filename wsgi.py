"""gunicorn entry point: ``gunicorn wsgi:app`` (each worker builds its own app and SGT)."""

from proxy import create_app

app = create_app()
