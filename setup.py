"""tfrcnn: Faster R-CNN and Mask R-CNN with FPN for TensorFlow 2 / Keras 3."""
from setuptools import find_packages, setup

setup(
    name="tfrcnn",
    version="0.1.0",
    description="Faster R-CNN and Mask R-CNN with FPN, MMDetection-style, for TensorFlow 2 and Keras 3",
    packages=find_packages(include=["tfrcnn", "tfrcnn.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.20",
        "keras>=3.10",
        "numpy",
        "pycocotools",
        "absl-py",
        "pyyaml",
        "pillow",
        "matplotlib",  # the error analysis' charts (tfrcnn.evaluation.plots): PR curves, confusion matrix, errors
    ],
    extras_require={
        # torch/torchvision are test-only references for numerical parity; never imported by tfrcnn.
        "test": [
            "pytest",
            "hypothesis",
            "torch==2.14.1",
            "torchvision==0.29.1",
            "scikit-image==0.26.0",  # real photos (skimage.data) for the torchvision parity test
        ],
    },
)
