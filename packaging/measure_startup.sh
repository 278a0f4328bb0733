#!/usr/bin/env bash
# Start-up time of HashView to its first shown window, cold and warm, under a private Xvfb.
#
#   xvfb-run -a -s "-screen 0 1400x900x24" packaging/measure_startup.sh HASHVIEW_EXE FOLDER ARG [N]
#
# HASHVIEW_EXE: the bundle's hashview (or a venv's); FOLDER: the files evicted from the page
# cache before each cold run (the bundle folder, or the venv); ARG: what the app opens (a
# library); N runs of each kind (default 3). Prints one "cold|warm SECONDS" line per run: from
# exec to the main window being mapped and viewable (xwininfo), i.e. its first paint is due.
# Cold evicts FOLDER's files with posix_fadvise (needs python3; no root): system libraries stay
# cached, as they mostly are on a desktop that is already running. Run with no HashView open
# (a running one would be handed the file instead).
set -u
EXE=$1; FOLDER=$2; ARG=$3; N=${4:-3}

main_window() {  # the window of class HashView (Qt's hidden leader window has no class)
    xwininfo -root -tree 2>/dev/null | grep '"HashView.*("' | head -1 | awk '{print $1}'
}

evict() {
    python3 - "$1" <<'EOF'
import os, sys
for folder, _, files in os.walk(sys.argv[1]):
    for name in files:
        path = os.path.join(folder, name)
        if os.path.islink(path):
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
EOF
}

one_start() {
    local start end id pid
    start=$(date +%s.%N)
    "$EXE" "$ARG" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 6000); do  # at most 2 minutes
        id=$(main_window)
        if [ -n "$id" ] && xwininfo -id "$id" | grep -q IsViewable; then
            end=$(date +%s.%N)
            echo "$(echo "$end - $start" | bc)"
            kill "$pid"; wait "$pid" 2>/dev/null
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { echo "exited before showing a window"; return 1; }
        sleep 0.02
    done
    kill "$pid"; echo "no window within 2 minutes"; return 1
}

uptime
for kind in cold warm; do
    for _ in $(seq 1 "$N"); do
        [ "$kind" = cold ] && evict "$FOLDER"
        echo "$kind $(one_start)"
        sleep 1
    done
done
uptime
