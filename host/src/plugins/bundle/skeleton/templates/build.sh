#!/bin/sh
# Build {name} into a WASM component (offline once componentize-py is installed).
set -e
cd "$(dirname "$0")"
componentize-py -d wit -w {kind} componentize app -o {name}.wasm.partial
mv {name}.wasm.partial {name}.wasm
