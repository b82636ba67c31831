"""The zip that carries nnlib to cluster workers imports on its own."""

import subprocess
import sys
import zipfile

import pytest

from nnlib.util.ship import zip_package


@pytest.mark.slow
def test_zipped_package_imports_from_the_zip(tmp_path):
    dest = zip_package(tmp_path / "nnlib.zip")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import nnlib.rounds.mapper, nnlib.engines.spark.session as s; "
        "print(nnlib.rounds.mapper.__file__); print(s.LOG4J_CONF)"
    )
    proc = subprocess.run([sys.executable, "-I", "-c", code, str(dest)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith(str(dest))
    names = zipfile.ZipFile(dest).namelist()
    assert "nnlib/engines/spark/log4j2.properties" in names and not any("__pycache__" in n for n in names)
