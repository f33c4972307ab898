#!/usr/bin/env bash
# `npm test`: the whole suite through tap, ending with "N passed, N failed".
set -o pipefail
cd "$(dirname "$0")/.."
npx tap run --reporter=tap "$@" 2>&1 | node scripts/tap-summary.mjs
