/*
 * tile_v3.c -- tile.c built again for x86-64-v3 (AVX2 and FMA): the same
 * kernels with 256-bit registers and fused multiply-adds, which
 * tl_tile_kernel picks at run time on CPUs that have both. The target is
 * set here, not by compiler flags, so every build (setuptools, make, the
 * sanitizers, clang for the fuzzer) compiles it the same way. Elsewhere than
 * x86 it is empty and the baseline kernels are the only ones.
 */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)

/* every header first, compiled for the baseline; the kernels after the target */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "engine.h"
#include "penalty.h"
#include "select.h"
#include "sizes.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif

#define TL_TILE_ISA v3
#define TL_TILE_VREG_BYTES 32
#include "tile.c"

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else
typedef int tl_tile_v3_absent; /* ISO C wants a declaration in every file */
#endif
