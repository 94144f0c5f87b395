"""``python -m proxy.sgt``: an alias of ``python -m sgt_tools``, the offline SGT tools.

The tools live outside the runtime package (and outside the image); imported only
when the alias runs, so that serving never loads them.
"""

import sys

if __name__ == "__main__":
    try:
        from sgt_tools.__main__ import main
    except ModuleNotFoundError as exc:
        sys.exit(f"python -m proxy.sgt needs the SGT tools (sgt_tools/, requirements-tools.txt): {exc}")
    sys.exit(main())
