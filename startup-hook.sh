#!/bin/sh
# Determined runs this in each task container before the entrypoint. Install what the stock
# PyTorch images lack; keep the image's own torch, torchvision and determined (its CUDA builds).
set -e
grep -vE '^(torch|torchvision|determined)==' requirements.txt | python3 -m pip install --quiet -r /dev/stdin
