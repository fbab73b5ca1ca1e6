/*
 * _xla_ffi_abi.h -- the part of the XLA FFI C ABI that trajloss's handlers use.
 *
 * XLA calls a custom-call handler with a pointer to a call frame: a C struct
 * of versioned, append-only C structs (XLA's documented FFI C API, the one
 * jax.ffi.register_ffi_target registers handlers for). The handlers read the
 * frame's argument and result buffers and create errors through the API's
 * function table. That API is declared here, field for field in the order the
 * C API defines, under names of our own, for two reasons:
 *   - the header that defines it ships only inside the jaxlib wheel, and
 *     trajloss must build (fast, and without jax) from its own sources;
 *   - only prefixes are needed: every struct starts with its size and XLA
 *     only ever appends fields, so a prefix read stays valid in later versions.
 * tests/test_jax_ffi.py compiles these declarations beside jaxlib's own
 * header (when jaxlib is installed) and checks every offset and size used.
 */
#ifndef TRAJLOSS_XLA_FFI_ABI_H
#define TRAJLOSS_XLA_FFI_ABI_H

#include <stddef.h>
#include <stdint.h>

/* The size a struct declares in its struct_size field: up to the end of its
 * last field (trailing padding excluded), as the C API counts it. */
#define TLX_STRUCT_SIZE(type, last) (offsetof(type, last) + sizeof(((type *)0)->last))

/* The API version a handler reports; XLA refuses handlers of another major. */
#define TLX_API_MAJOR 0

/* Extension chain entries (only the metadata query is one). */
enum { TLX_EXTENSION_METADATA = 1 };

typedef struct tlx_extension {
    size_t struct_size;
    int type; /* TLX_EXTENSION_* */
    struct tlx_extension *next;
} tlx_extension;

typedef struct {
    size_t struct_size;
    tlx_extension *extension_start;
    int major_version;
    int minor_version;
} tlx_api_version;

/* Error codes (absl status codes). */
enum { TLX_ERROR_INVALID_ARGUMENT = 3, TLX_ERROR_RESOURCE_EXHAUSTED = 8, TLX_ERROR_INTERNAL = 13 };

typedef struct tlx_error tlx_error; /* opaque, owned by XLA once returned */

typedef struct {
    size_t struct_size;
    tlx_extension *extension_start;
    const char *message; /* copied by XLA */
    int errc;
} tlx_error_create_args;

/* The API's function table: only its first function (error creation) is used. */
typedef struct {
    size_t struct_size;
    tlx_extension *extension_start;
    tlx_api_version api_version;
    const void *internal_api;
    tlx_error *(*error_create)(tlx_error_create_args *args);
} tlx_api;

/* Element types of buffers (XLA primitive type numbers). */
enum {
    TLX_PRED = 1,
    TLX_S8 = 2,
    TLX_S16 = 3,
    TLX_S32 = 4,
    TLX_S64 = 5,
    TLX_U8 = 6,
    TLX_U32 = 8,
    TLX_F32 = 11,
    TLX_F64 = 12
};

typedef struct {
    size_t struct_size;
    tlx_extension *extension_start;
    int dtype; /* TLX_* */
    void *data;
    int64_t rank;
    int64_t *dims; /* rank of them, row-major dense */
} tlx_buffer;

enum { TLX_ARG_BUFFER = 1 };

typedef struct {
    size_t struct_size;
    tlx_extension *extension_start;
    int64_t size;
    int *types;  /* TLX_ARG_BUFFER for every buffer */
    void **args; /* tlx_buffer * */
} tlx_args;

typedef struct {
    size_t struct_size;
    tlx_extension *extension_start;
    int64_t size;
    int *types;
    void **rets; /* tlx_buffer * */
} tlx_rets;

typedef struct {
    size_t struct_size;
    tlx_extension *extension_start;
    int64_t size;
    int *types;
    void **names;
    void **attrs;
} tlx_attrs;

typedef struct {
    size_t struct_size;
    tlx_extension *extension_start; /* a metadata query when it is one */
    const tlx_api *api;             /* NULL in a metadata query */
    void *ctx;
    int stage;
    tlx_args args;
    tlx_rets rets;
    tlx_attrs attrs;
    void *future;
} tlx_call_frame;

/* What a handler reports when XLA queries it (at registration). */
typedef struct {
    size_t struct_size;
    tlx_api_version api_version;
    uint32_t traits;
} tlx_metadata;

typedef struct {
    tlx_extension extension_base;
    tlx_metadata *metadata;
} tlx_metadata_extension;

typedef tlx_error *tlx_handler(tlx_call_frame *frame);

#endif /* TRAJLOSS_XLA_FFI_ABI_H */
