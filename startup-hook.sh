#!/bin/sh
# Determined runs this in each task container before the entrypoint. Install what the stock
# PyTorch images lack, letting pip fit the versions to the image's Python, numpy and torch
# (requirements.txt pins a local environment; its numpy/torch pins need not suit an image).
set -e
python3 -m pip install --quiet --upgrade-strategy only-if-needed \
    "imagehash>=4.3" "kaggle>=1.6" "filelock>=3.12" "appdirs>=1.4" "PyYAML>=6" "tqdm>=4.66" \
    "scikit-learn>=1.2" "matplotlib>=3.7" "faiss-cpu>=1.7" "onnxruntime>=1.17" "onnx>=1.15"
