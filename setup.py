"""Build step: the wheel carries systemd/ (the units' one source) as package data.

`edge-matte install-service` must find the units in an installed wheel, not only in a checkout,
and systemd/ stays at the top of the source tree where the guide and the README expect it; so
it is copied into the built package (`edge_matte/tools/systemd/`) rather than moved. An editable
install reads the checkout's systemd/ directly (`edge_matte.tools.install.shipped_dir`).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

UNITS = Path(__file__).resolve().parent / "systemd"


class BuildPyWithUnits(build_py):
    """build_py, then systemd/ copied into the package being built."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            target = Path(self.build_lib) / "edge_matte" / "tools" / "systemd"
            shutil.rmtree(target, ignore_errors=True)  # a file gone from systemd/ goes here too
            shutil.copytree(UNITS, target)


setup(cmdclass={"build_py": BuildPyWithUnits})
