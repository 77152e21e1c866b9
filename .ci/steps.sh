#!/usr/bin/env bash
# The CI steps, one subcommand each, shared by .ci/run (all of them, locally) and .github/workflows/ci.yml.
#   system   the Debian packages the tests drive (Chromium): .ci/system-packages.sh
#   setup    virtualenv + install ($VENV, default .venv)
#   data     the Omniglot zips: $OMNIGLOT_DIR if set, else downloaded once into data/raw/omniglot (MD5-checked)
#   test     ruff, mypy, pytest (with `dvc repro` of the quick profile in a temporary repo)
#   smoke    the whole pipeline on each quick profile (Omniglot, kanji), in build/<profile>
#   repro    the whole pipeline on the default profile, here (nightly or by hand: ~25 min on 2 cores)
#   gate     each run's metrics against its profile's floors and committed reference; writes reports/report.md
#   summary  the reports as Markdown (a job summary): pictures are in the uploaded reports, not inline
set -euo pipefail
cd "$(dirname "$0")/.."
export VENV="${VENV:-.venv}"
# The zips are looked for here when OMNIGLOT_DIR is unset; `data` downloads them there.
export OMNIGLOT_DIR="${OMNIGLOT_DIR:-$PWD/data/raw/omniglot}"

for step in "$@"; do
    echo "== ci: $step" >&2
    case "$step" in
        system) .ci/system-packages.sh ;;
        setup) make setup ;;
        data)
            if [ ! -f "$OMNIGLOT_DIR/images_background.zip" ] || [ ! -f "$OMNIGLOT_DIR/images_evaluation.zip" ]; then
                "$VENV/bin/python" - <<'PY'
import dataclasses, os
from pipeline.config import load_params, section
from pipeline.data.omniglot import locate_zips
from pipeline.data.prepare import DataConfig
cfg = section(load_params(), DataConfig, "data")
print(locate_zips(dataclasses.replace(cfg, local_dir=os.environ["OMNIGLOT_DIR"]), env={}))
PY
            fi ;;
        test) make test ;;
        smoke) make smoke ;;
        repro) make repro ;;
        gate) make gate ;;
        summary)
            for report in build/*/reports/report.md reports/report.md; do
                if [ -f "$report" ]; then sed '/^## Pictures/,$d' "$report"; echo; fi
            done
            echo "Pictures: this run's \`reports-*\` artifact." ;;
        *) echo "unknown step: $step (system, setup, data, test, smoke, repro, gate, summary)" >&2; exit 2 ;;
    esac
done
