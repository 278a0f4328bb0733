# A regular package, so that ``tests.fuzz`` is this folder even when a dependency's wheel
# installs a top-level ``tests`` package of its own (torchstain 1.4.1 does).
