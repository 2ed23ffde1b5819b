#!/usr/bin/env bash
# Runs the flash-attention kernels (src/compute/flash_attention.cu) on the CPU under a
# functional emulation of the CUDA subset they use (cuda_emu.h: one thread per CUDA
# thread, barriers, mma.sync and ldmatrix in the PTX fragment layouts, cp.async copies
# landing as late as their waits allow), and prints each output's
# and gradient's largest error against a float64 reference next to its largest value.
# For checking kernel changes on a machine without a GPU; bf16 rounding makes errors of
# about 0.5% of the largest value normal. Needs g++ with C++20; takes about a minute.
# An argument names another kernel source to check (a variant being developed);
# `--sm90 [BASE [SM90]]` checks the Hopper kernels (flash_attention_sm90.cu appended to
# the base source with FLASH_WGMMA defined, as the host compiles them for sm_90a).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
sm90=""
if [ "${1:-}" = "--sm90" ]; then
  shift
  sm90=$(realpath "${2:-$here/../../src/compute/flash_attention_sm90.cu}")
fi
source_file=$(realpath "${1:-$here/../../src/compute/flash_attention.cu}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{
  if [ -n "$sm90" ]; then echo "#define FLASH_WGMMA 1"; fi
  cat "$source_file"
  if [ -n "$sm90" ]; then cat "$sm90"; fi
} | sed -e 's|#include <cuda_bf16.h>|#include "cuda_emu.h"|' \
  -e 's|extern __shared__ __align__(128) unsigned char smem\[\];|unsigned char* smem = g_smem;|' \
  -e 's|extern "C" __global__|inline|' >"$work/kernel_emu.h"
cp "$here/cuda_emu.h" "$work/"
g++ -std=c++20 -O1 -pthread -I"$work" "$here/flash_attention_check.cpp" -o "$work/check"
"$work/check"
