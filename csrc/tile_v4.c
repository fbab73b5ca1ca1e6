/*
 * tile_v4.c -- tile.c built a third time, for x86-64-v4 (AVX-512): the
 * same 256-bit kernels as tile_v3.c, with the instruction set's 32 vector
 * registers instead of 16 and its masks. The kernels' step loops hold a
 * tile's states, adjoints and broadcast coefficients in registers; with 16
 * they spill more (the double integrator's B = 1024 runs 25 % faster here
 * in float64, 15 % in float32: the uniform version's blocks of four steps
 * need the registers). The vectors stay 256 bits wide: the 512-bit
 * kernels this project once had gained 0-20 %, too little for a layer of
 * their own. tl_tile_kernel picks this build on
 * CPUs that have AVX-512 F, VL, BW and DQ. The target is set here, not by
 * compiler flags, as in tile_v3.c. -DTL_TILE_NO_V4 leaves it out: the
 * valgrind build (valgrind does not run AVX-512) and the builds whose tests
 * call the kernels only through the library (csrc/Makefile, .ci/asan_pytest.sh).
 */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(TL_TILE_NO_V4)

/* every header first, compiled for the baseline; the kernels after the target */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "engine.h"
#include "penalty.h"
#include "select.h"
#include "sizes.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,avx512f,avx512vl,avx512bw,avx512dq"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,avx512f,avx512vl,avx512bw,avx512dq", "prefer-vector-width=256")
#endif

#define TL_TILE_ISA v4
#define TL_TILE_VREG_BYTES 32
#include "tile.c"

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else
typedef int tl_tile_v4_absent; /* ISO C wants a declaration in every file */
#endif
