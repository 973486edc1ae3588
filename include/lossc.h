/* lossc's C API (liblossc_c.so, built by `cargo build --release -p lossc-capi`).
 *
 * Compile lx source, look up a loss, call it on raw pointers with shapes, read errors as strings, free
 * everything. A call reads float32 and int64 inputs where the caller holds them and writes the gradients it
 * is given buffers for into them (the JIT backend; int32 labels are widened). No function aborts or
 * unwinds into C: every failure is a nonzero code and, where `error` is not NULL, a message the caller
 * frees with lossc_string_free. Objects are freed with their _free function (NULL is accepted).
 * A lossc_loss serves one call at a time per thread (calls from several threads are serialized).
 */
#ifndef LOSSC_H
#define LOSSC_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Result codes. */
enum lossc_status {
    LOSSC_OK = 0,
    LOSSC_COMPILE_ERROR = 1,  /* the source does not compile, or no such loss */
    LOSSC_INPUT_ERROR = 2,    /* a missing, unknown or repeated input, or one of the wrong dtype */
    LOSSC_SHAPE_ERROR = 3,    /* a shape disagrees with the signature or another input */
    LOSSC_LABEL_ERROR = 4,    /* a label or data-dependent subscript out of range */
    LOSSC_HYPER_ERROR = 5,    /* an unknown or non-integer hyperparameter */
    LOSSC_ARGUMENT_ERROR = 6, /* a NULL pointer or an invalid dtype code passed to the API */
    LOSSC_INTERNAL_ERROR = 7, /* a bug in lossc (never the input's fault) */
    LOSSC_MEMORY_ERROR = 8    /* the call would need more memory than the budget (LOSSC_MEMORY_BUDGET) */
};

/* Element types of inputs. */
enum lossc_dtype { LOSSC_F32 = 0, LOSSC_I64 = 1, LOSSC_I32 = 2 };

typedef struct lossc_module lossc_module;
typedef struct lossc_loss lossc_loss;

/* One input: name, elements (row-major, contiguous), element type, rank and shape. */
typedef struct {
    const char *name;
    const void *data;
    int dtype;
    size_t rank;
    const size_t *shape;
} lossc_input;

/* A hyperparameter set for one call. */
typedef struct {
    const char *name;
    double value;
} lossc_hyper;

/* Where the gradient of input `name` goes: `len` float32 elements (the input's size). */
typedef struct {
    const char *name;
    float *data;
    size_t len;
} lossc_grad;

/* Compiles lx source (`file_name` is what diagnostics show). NULL on failure, with *error the rendered
 * diagnostics. */
lossc_module *lossc_compile(const char *source, const char *file_name, char **error);

/* Reads and compiles a .lx file. */
lossc_module *lossc_compile_file(const char *path, char **error);

void lossc_module_free(lossc_module *module);

/* How many losses the module defines or imports, and the name of the i-th (owned by the module). */
size_t lossc_module_loss_count(const lossc_module *module);
const char *lossc_module_loss_name(const lossc_module *module, size_t i);

/* Builds the kernel (loss + every gradient) of loss `name` (NULL: the only one) on `threads` threads
 * (0: one per core). NULL on failure, with *error set. */
lossc_loss *lossc_module_loss(const lossc_module *module, const char *name, size_t threads, char **error);

void lossc_loss_free(lossc_loss *loss);

/* One call: writes the loss into *loss_out and each gradient into its buffer. Returns LOSSC_OK or an
 * error code, with *error the message (the same text as the command line's). */
int lossc_loss_call(lossc_loss *loss, const lossc_input *inputs, size_t n_inputs, const lossc_hyper *hypers,
                    size_t n_hypers, lossc_grad *grads, size_t n_grads, float *loss_out, char **error);

/* Frees a message returned through an `error` argument. */
void lossc_string_free(char *s);

#ifdef __cplusplus
}
#endif

#endif /* LOSSC_H */
