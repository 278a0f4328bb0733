"""Entry point of the stand-alone bundle: the ``hashview`` command, plus ``-m hashview.MODULE``.

The app starts its background jobs as ``sys.executable -m hashview.jobs.worker SPEC`` (see
``hashview.jobs.worker_command``). In the bundle ``sys.executable`` is this program, not a
Python, so it answers ``-m`` the way Python does, for HashView's own modules only.
"""

import multiprocessing
import runpy
import sys


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "-m":
        module = sys.argv[2]
        if module != "hashview" and not module.startswith("hashview."):
            print(f"hashview: -m {module}: only HashView's own modules run here", file=sys.stderr)
            return 2
        sys.argv = [sys.argv[0], *sys.argv[3:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    from hashview.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    multiprocessing.freeze_support()  # a no-op except where worker processes are spawned
    sys.exit(main())
