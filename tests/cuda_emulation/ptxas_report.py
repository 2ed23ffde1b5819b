#!/usr/bin/env python3
"""Compiles the flash-attention kernels with NVRTC, as graft does on the GPU, and prints
ptxas's report: registers, spills, and the wgmma serialization notices (C75xx) that
cost the Hopper kernels most of their speed when they appear. NVRTC compiles without
a GPU, so a kernel change can be checked for these on any machine that has the
library (pip's nvidia-cuda-nvrtc, or a CUDA toolkit).

    tests/cuda_emulation/ptxas_report.py [--arch sm_90a] [--mma-only]
        [--nvrtc PATH/libnvrtc.so] [--include DIR] [BASE [SM90]]

--arch sm_90a (the default) appends flash_attention_sm90.cu with FLASH_WGMMA defined,
as the host does on compute capability 9.0; --mma-only or another arch compiles the
mma.sync source alone. Exits non-zero when NVRTC rejects the source.
"""
import argparse
import ctypes
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "..", "src", "compute")


def find(pattern_list):
    for pattern in pattern_list:
        hits = sorted(glob.glob(pattern, recursive=True))
        if hits:
            return hits[-1]
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", nargs="?", default=os.path.join(SRC, "flash_attention.cu"))
    parser.add_argument("sm90", nargs="?", default=os.path.join(SRC, "flash_attention_sm90.cu"))
    parser.add_argument("--arch", default="sm_90a")
    parser.add_argument("--mma-only", action="store_true")
    parser.add_argument("--nvrtc", help="path of libnvrtc.so (searched for in the CUDA toolkit and pip's nvidia packages)")
    parser.add_argument("--include", help="directory holding cuda_bf16.h")
    args = parser.parse_args()

    roots = ["/usr/local/cuda*/", "/usr/local/lib/python3*/*-packages/nvidia/*/", os.path.expanduser("~/.local/lib/python3*/site-packages/nvidia/*/"), "/tmp/*/lib/python3*/site-packages/nvidia/*/"]
    lib = args.nvrtc or find([r + "lib*/libnvrtc.so*" for r in roots])
    include = args.include or (os.path.dirname(find([r + "include/cuda_bf16.h" for r in roots]) or ""))
    if not lib or not include:
        sys.exit("no NVRTC found: pass --nvrtc PATH/libnvrtc.so and --include DIR (pip install nvidia-cuda-nvrtc)")

    source = open(args.base).read()
    if args.arch == "sm_90a" and not args.mma_only:
        source = "#define FLASH_WGMMA 1\n" + source + "\n" + open(args.sm90).read()
    nvrtc = ctypes.CDLL(lib)
    program = ctypes.c_void_p()
    if nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), b"flash_attention.cu", 0, None, None):
        sys.exit("nvrtcCreateProgram failed")
    options = [f"--gpu-architecture={args.arch}", "--std=c++17", f"--include-path={include}", "--ptxas-options=-v"]
    array = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    status = nvrtc.nvrtcCompileProgram(program, len(options), array)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    print(f"{lib}, {args.arch}")
    kernel = None
    for line in log.value.decode(errors="replace").splitlines():
        if "Compiling entry function" in line:
            kernel = line.split("'")[1]
        elif "Used" in line and kernel:
            print(f"{kernel}: {line.split(':', 1)[1].strip()}")
        elif "spill" in line and kernel and " 0 bytes spill stores" not in line:
            print(f"{kernel}: {line.split('.', 1)[1].strip()}")
        elif "C75" in line or "error" in line.lower() or "warning" in line.lower():
            print(line)
    sys.exit(1 if status else 0)


if __name__ == "__main__":
    main()
