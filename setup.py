"""detres: deep residual networks for recognition, detection and localization."""
from pathlib import Path

from setuptools import find_packages, setup


def read_version() -> str:
    for line in (Path(__file__).parent / "detres" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("detres/__init__.py has no __version__")


setup(
    name="detres",
    version=read_version(),
    description="Deep residual networks (He et al., 2015) for image recognition, detection and localization",
    long_description=(Path(__file__).parent / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["detres", "detres.*"]),
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy",
        "pycocotools>=2.0.7",
        "Pillow",
        "opencv-python-headless>=4.8",
        "fvcore>=0.1.5.post20221221",
        "iopath",
        "tensorboard",
        "matplotlib",
        "PyYAML",
        "tqdm",
        "albumentations>=2.0.8",  # INPUT.ALBUMENTATIONS (imported only when set)
    ],
    extras_require={"dev": ["pytest>=7", "pytest-timeout", "faster-coco-eval>=1.8", "onnx>=1.15", "onnxruntime>=1.17"],
                    "fast-eval": ["faster-coco-eval>=1.8"],  # TEST.COCO_EVAL_BACKEND faster_coco_eval
                    "export": ["onnx>=1.15", "onnxruntime>=1.17"]},  # run exported ONNX files (tools/export_model.py)
)
