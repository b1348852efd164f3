"""Preload the CPU stand-ins for torchvision's CUDA library dependencies.

Installed into the peer venv's site-packages by setup_peer.sh, with a .pth file that
imports it at interpreter start-up (before anything can import torchvision).  Loading the
three stub libraries with RTLD_GLOBAL makes the dynamic loader satisfy torchvision/_C.so's
DT_NEEDED entries (libcudart.so.13, libc10_cuda.so, libtorch_cuda.so) by SONAME, so the
real compiled torchvision CPU ops (nms, roi_align, ...) load next to the CPU-only torch.
See benchmarks/peer/README.md.  Does nothing if the stubs are missing.
"""

import ctypes
import os

_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_tv_cuda_stubs")
for _name in ("libcudart.so.13", "libc10_cuda.so", "libtorch_cuda.so"):
    _path = os.path.join(_DIR, _name)
    if os.path.exists(_path):
        ctypes.CDLL(_path, mode=ctypes.RTLD_GLOBAL)
