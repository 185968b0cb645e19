"""kohya-ext: character-consistency metrics for kohya-ss/sd-scripts LoRA training.

`callbacks/` and `patches/` live at the top of the repository but install as
`kohya_ext.callbacks` and `kohya_ext.patches`, so nothing named `callbacks`
or `patches` lands at the top of site-packages.
"""

from setuptools import setup

VERSION = "0.1.0"

setup(
    name="kohya-ext",
    version=VERSION,
    description="Character-consistency (facial proportion) metrics, early stopping and best-checkpoint "
    "tracking for kohya-ss/sd-scripts LoRA training",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[
        "kohya_ext",
        "kohya_ext.backends",
        "kohya_ext.comfy",
        "kohya_ext.training",
        "kohya_ext.posthoc",
        "kohya_ext.callbacks",
        "kohya_ext.patches",
        "kohya_ext.presets",
        "kohya_ext.sd_options",
    ],
    package_dir={
        "kohya_ext": "kohya_ext",
        "kohya_ext.callbacks": "callbacks",
        "kohya_ext.patches": "patches",
        "kohya_ext.presets": "presets",
    },
    package_data={"kohya_ext.presets": ["*.toml"], "kohya_ext.sd_options": ["*.json"]},
    # No opencv here on purpose: sd-scripts pins opencv-python and anime-face-detector asks for
    # opencv-python-headless; both own cv2/, so we never pull either (see README, "Installing").
    # No anime-face-detector either: on Python < 3.12 pip would silently pick the broken 0.0.9;
    # scripts/install.sh installs 0.1.0 with --no-deps --ignore-requires-python.
    install_requires=[
        "numpy>=1.23",
        "pillow>=9.0",
        "torch>=2.0",
        "torchvision>=0.15",
        "safetensors>=0.4",
        "huggingface_hub>=0.20",
        "filelock>=3.0",  # measurement-cache merges between concurrent scorers; torch and huggingface_hub bring it too
        "tqdm>=4.60",
        "tomli>=1.1; python_version<'3.11'",
        "animeface==2.0.3; platform_system=='Linux' and platform_machine=='x86_64'",
    ],
    extras_require={
        "trackers": ["tensorboard>=2.10", "wandb>=0.15"],
        "report": ["matplotlib>=3.6", "tensorboard>=2.10"],  # plots; loss curves read from TensorBoard logs
        # accelerate: the stand-in of sd-scripts' loop uses it as sd-scripts does. No pin: a fresh
        # venv gets the newest release, and the multi-rank tests also run with 1.6.0 (sd-scripts
        # v0.10.x's pin), fetched by tests/conftest.py (see docs/training.md, "accelerate versions").
        "test": ["pytest>=7", "tensorboard>=2.10", "matplotlib>=3.6", "wandb>=0.15", "accelerate>=1.6", "toml>=0.10"],
    },
    entry_points={"console_scripts": ["kohya-ext=kohya_ext.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Operating System :: POSIX :: Linux",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
