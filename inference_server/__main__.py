"""``python -m inference_server``: start the server."""

import sys

from inference_server.cli import main

if __name__ == "__main__":
    sys.exit(main())
