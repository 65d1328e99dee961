"""Print the launchers' default device, ``cuda`` or ``cpu``, without importing torch where there is no GPU.

``python -m common.default_device`` answers what ``torch.cuda.is_available()`` answers. Importing torch
takes seconds on a small CPU, paid again by the program the launcher then starts; so the CUDA driver is
asked first (``libcuda``'s ``cuInit`` and ``cuDeviceGetCount``, which honour ``CUDA_VISIBLE_DEVICES``),
and only when it reports a GPU does torch confirm that it can use it (its CUDA build may not match the
driver). No driver library, or no device: ``cpu`` at once.
"""

import ctypes

_CUDA_SUCCESS = 0


def driver_sees_a_gpu() -> bool:
    """Whether the CUDA driver library loads and reports at least one visible device."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")  # the driver's soname on Linux
    except OSError:
        return False
    count = ctypes.c_int(0)
    if driver.cuInit(0) != _CUDA_SUCCESS:
        return False
    return driver.cuDeviceGetCount(ctypes.byref(count)) == _CUDA_SUCCESS and count.value > 0


def default_device_name() -> str:
    """``cuda`` if torch can use a GPU here, else ``cpu``."""
    if not driver_sees_a_gpu():
        return "cpu"
    import torch  # only on machines with a GPU driver: whether this torch build can use it

    return "cuda" if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    print(default_device_name())
