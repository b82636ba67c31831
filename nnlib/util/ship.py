"""Ship nnlib to a cluster's workers as one zip (Spark's and mrjob's ``--py-files``).

python -m nnlib.util.ship build/nnlib.zip
"""

from __future__ import annotations

import sys
import zipfile
from importlib.util import find_spec
from pathlib import Path

_SPEC = find_spec("nnlib")
assert _SPEC is not None and _SPEC.submodule_search_locations  # this module is part of the package
PACKAGE_DIR = Path(_SPEC.submodule_search_locations[0]).resolve()  # the package's root folder


def zip_package(dest: str | Path) -> Path:
    """Write the nnlib package (sources and data files, no caches) to the zip ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(PACKAGE_DIR.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                z.write(path, path.relative_to(PACKAGE_DIR.parent))
    return dest


if __name__ == "__main__":
    print(zip_package(sys.argv[1] if len(sys.argv) > 1 else "build/nnlib.zip"))
