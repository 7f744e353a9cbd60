"""The firmware's C++ sources (core harness, ports, CMake files), installed with the Python package as
data, so that `cg-bench --tflm-root` and `python -m cosinegate.bench.qemu` build the QEMU port from
any install: `importlib.resources.files("cosinegate.firmware")`. Nothing here is Python."""
