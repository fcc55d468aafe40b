"""Installs the ``regnet`` package and its ``regnet`` console command."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="regnet",
    version="0.1.0",
    description="Supervised 3D deformable image registration with CNNs trained on synthetic DVFs (RegNet)",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["regnet", "regnet.*"]),
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "SimpleITK>=2.3",
        "joblib>=1.3",
        "xmltodict>=0.13",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        # tensorflow-cpu on machines without a GPU: same version, half the download.
        "tensorflow-cpu>=2.16; platform_machine=='x86_64' and sys_platform=='linux'",
        "tensorflow>=2.16; platform_machine!='x86_64' or sys_platform!='linux'",
    ],
    extras_require={
        "test": ["pytest>=7", "dask[distributed]>=2023.1"],
        "dask": ["dask[distributed]>=2023.1"],
    },
    entry_points={"console_scripts": ["regnet=regnet.cli:main"]},
)
