#!/usr/bin/env bash
# Build the stand-alone HashView bundle (PyInstaller, one folder) and its archive.
#
#   packaging/build.sh [OUT_DIR]          default OUT_DIR: packaging/dist (git-ignored)
#
# Writes OUT_DIR/hashview/ (run OUT_DIR/hashview/hashview) and
# OUT_DIR/hashview-VERSION-linux-ARCH.tar.zst (.tar.gz without zstd). Slow (minutes) and large
# (gigabytes): not part of the tests or CI. Environment:
#   PYTHON      the Python that builds; its version is the one bundled (default python3)
#   BUILD_VENV  the build environment (default OUT_DIR/venv): created if missing, else reused
#   TORCH_SPEC  pip arguments installed before HashView, to pick the torch build, e.g. the
#               CPU-only one: "torch torchvision --index-url https://download.pytorch.org/whl/cpu"
#   ZSTD_LEVEL  archive compression level (default 6)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(realpath -m "${1:-$ROOT/packaging/dist}")
VENV=${BUILD_VENV:-$OUT/venv}
PYTHON=${PYTHON:-python3}
ZSTD_LEVEL=${ZSTD_LEVEL:-6}

step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

mkdir -p "$OUT"
step "build environment $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q "pyinstaller>=6.10"
if [ -n "${TORCH_SPEC:-}" ]; then
    # shellcheck disable=SC2086  # TORCH_SPEC is a list of pip arguments
    "$VENV/bin/pip" install -q $TORCH_SPEC
fi
# Not editable: the bundle must get the package as a wheel installs it (resources included).
# setuptools builds in ROOT/build and keeps files there that were deleted since: start clean.
rm -rf "$ROOT/build"
"$VENV/bin/pip" install -q "$ROOT[app]"  # the bundle is the desktop app: Qt included
"$VENV/bin/pip" install -q --no-deps --force-reinstall "$ROOT"  # this checkout, even if unchanged version

step "pyinstaller"
rm -rf "$OUT/hashview"
"$VENV/bin/pyinstaller" --noconfirm --log-level WARN \
    --distpath "$OUT" --workpath "$OUT/work" "$ROOT/packaging/hashview.spec"

step "smoke test: models, then the demo (OpenSlide, torch, FAISS) with a bare environment"
rm -rf "$OUT/smoke-home"
env -i HOME="$OUT/smoke-home" PATH=/usr/bin:/bin "$OUT/hashview/hashview" models
env -i HOME="$OUT/smoke-home" PATH=/usr/bin:/bin "$OUT/hashview/hashview" demo | tail -3

step "archive"
VERSION=$("$VENV/bin/python" -c "import hashview; print(hashview.__version__)")
NAME="hashview-$VERSION-linux-$(uname -m)"
if command -v zstd >/dev/null; then
    ARCHIVE="$OUT/$NAME.tar.zst"
    tar -C "$OUT" -cf - hashview | zstd -q -T0 "-$ZSTD_LEVEL" -o "$ARCHIVE" -f
else
    ARCHIVE="$OUT/$NAME.tar.gz"
    tar -C "$OUT" -czf "$ARCHIVE" hashview
fi

step "done"
du -sh "$OUT/hashview" "$ARCHIVE"
