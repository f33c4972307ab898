#!/usr/bin/env bash
# `npm run bench [-- --quick]`: setup (Debian packages, npm packages), build, the bench helper
# tools, then the TypeScript driver (bench/run.ts). Results: bench/results/latest.{json,md,svg}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
npm run build --silent
make -s -C bench/tools OUT="$PWD/build/bench"
exec node --import tsx bench/run.ts "$@"
