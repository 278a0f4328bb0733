"""Build hook: a wheel carries the bundled resources inside the package.

The repository keeps models, icons and demo data in ``resources/`` and the desktop files in
``packaging/linux`` (the one copy that is committed); a wheel has no such folders, so ``build_py``
copies them to ``hashview/_resources/<name>``, where ``hashview.resources`` looks in an installed
copy. Everything else about the build is in ``pyproject.toml``.
"""

import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# The same name -> folder table the package reads at run time (the module is standard library only).
CHECKOUT_DIRS = runpy.run_path(str(ROOT / "hashview" / "resources.py"))["CHECKOUT_DIRS"]


class BuildPyWithResources(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads resources/ in place
        target = Path(self.build_lib) / "hashview" / "_resources"
        for name, folder in CHECKOUT_DIRS.items():
            source = ROOT / folder
            if not source.is_dir():
                raise SystemExit(f"{source}: resource folder missing, cannot build HashView")
            self.copy_tree(str(source), str(target / name))


setup(cmdclass={"build_py": BuildPyWithResources})
