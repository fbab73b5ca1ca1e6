/*
 * xla_ffi.h -- the XLA FFI handlers of xla_ffi.c, as the extension module
 * sees them: a name (the custom-call target trajloss.jax registers) and a
 * function XLA calls with its call frame.
 */
#ifndef TRAJLOSS_XLA_FFI_H
#define TRAJLOSS_XLA_FFI_H

#include <stddef.h>

/* The C API minor version whose structs xla_ffi.c reads: the first one XLA
 * queries handlers for, accepted by every jaxlib that does. */
#define TLX_API_MINOR 1

/* Float64 option slots of a call (the opts operand trajloss/jax.py packs). */
#define TLX_OPTIONS 7

typedef struct {
    const char *name;
    void *handler; /* an XLA_FFI_Handler: a function of the call frame */
} tlx_target;

/* The handlers; *count of them. */
const tlx_target *tlx_targets(size_t *count);

#endif /* TRAJLOSS_XLA_FFI_H */
