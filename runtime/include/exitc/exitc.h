/* exitc C ABI: a stable, exception-free interface to the C++ runtime (libexitc).
 *
 * Every function returns an exitc_status (or a plain value that cannot fail). On failure the
 * message is available from exitc_last_error_message() on the same thread until the next failing
 * call on that thread. Handles are opaque; free them with the matching *_free function (NULL is
 * accepted). A model handle may be used by many threads at once; a result handle by one.
 */
#ifndef EXITC_EXITC_H
#define EXITC_EXITC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define EXITC_API __declspec(dllexport)
#else
#define EXITC_API __attribute__((visibility("default")))
#endif

typedef enum exitc_status {
    EXITC_OK = 0,
    EXITC_ERR_INVALID_ARGUMENT = 1, /* bad feeds or arguments (incl. NULL pointers) */
    EXITC_ERR_MANIFEST = 2,         /* manifest.json unreadable / invalid / unsupported version */
    EXITC_ERR_IO = 3,               /* a file named by the manifest is missing or unreadable */
    EXITC_ERR_BACKEND = 4,          /* the engine failed to load or run a graph */
    EXITC_ERR_INTERNAL = 5          /* anything else (bug, out of memory) */
} exitc_status;

/* Element types: ONNX TensorProto.DataType codes. */
typedef enum exitc_dtype {
    EXITC_FLOAT32 = 1,
    EXITC_UINT8 = 2,
    EXITC_INT8 = 3,
    EXITC_UINT16 = 4,
    EXITC_INT16 = 5,
    EXITC_INT32 = 6,
    EXITC_INT64 = 7,
    EXITC_BOOL = 9,
    EXITC_FLOAT16 = 10,
    EXITC_FLOAT64 = 11,
    EXITC_UINT32 = 12,
    EXITC_UINT64 = 13,
    EXITC_BFLOAT16 = 16
} exitc_dtype;

/* A non-owning view of a dense row-major tensor. */
typedef struct exitc_tensor_view {
    const char* name;
    int32_t dtype; /* an exitc_dtype */
    const int64_t* shape;
    size_t rank;
    const void* data;
} exitc_tensor_view;

typedef struct exitc_model exitc_model;   /* a loaded artifact */
typedef struct exitc_result exitc_result; /* the outputs of one run */

/* Load an artifact directory. intra_op_threads <= 0 means the default (EXITC_THREADS or #CPUs). */
EXITC_API exitc_status exitc_model_load(const char* artifact_dir, int intra_op_threads, exitc_model** out_model);
EXITC_API void exitc_model_free(exitc_model* model);

EXITC_API size_t exitc_model_num_exits(const exitc_model* model);
EXITC_API size_t exitc_model_num_inputs(const exitc_model* model);
/* Name of input i, valid while the model lives; NULL if out of range. */
EXITC_API const char* exitc_model_input_name(const exitc_model* model, size_t i);

/* Run one batch. The views are read during the call only. */
EXITC_API exitc_status exitc_model_run(const exitc_model* model, const exitc_tensor_view* inputs,
                                       size_t num_inputs, exitc_result** out_result);
EXITC_API void exitc_result_free(exitc_result* result);

EXITC_API size_t exitc_result_num_outputs(const exitc_result* result);
/* View of output i (name, dtype, shape, data), valid until the result is freed. */
EXITC_API exitc_status exitc_result_output(const exitc_result* result, size_t i, exitc_tensor_view* out_view);
/* Exit index per row (int64, batch entries); num_exits means "ran the whole model". */
EXITC_API const int64_t* exitc_result_exit_index(const exitc_result* result, size_t* out_batch);

/* Exit statistics: counts[k] rows left at exit k, counts[num_exits] ran the whole model.
 * Writes min(capacity, num_exits + 1) counts; *out_num_counts (optional) gets num_exits + 1. */
EXITC_API exitc_status exitc_model_stats(const exitc_model* model, uint64_t* counts, size_t capacity,
                                         size_t* out_num_counts);
/* Resets the exit counts and the totals below. */
EXITC_API void exitc_model_reset_stats(exitc_model* model);

/* Call totals since load (or the last reset), versioned by struct_size: the caller sets
 * struct_size = sizeof(exitc_model_totals); the library fills the fields that fit in both its own
 * and the caller's version of the struct (later versions only append fields) and sets struct_size
 * to the number of bytes it wrote. struct_size below EXITC_MODEL_TOTALS_V1_SIZE is an error.
 *
 * Times are summed over successful exitc_model_run calls (and so over threads), steady clock:
 *   engine_seconds:   inside the graph engine (segment graphs, conditional.onnx at batch 1);
 *   overhead_seconds: the rest of the run inside the core after feed validation: exit decisions
 *                     (score >= threshold), compaction of carried tensors / inputs, scatter of
 *                     results, result and workspace setup, releasing engine outputs, statistics.
 * Not counted: feed validation, and argument / result conversion in this C layer. */
typedef struct exitc_model_totals {
    size_t struct_size;
    uint64_t calls; /* successful runs */
    uint64_t rows;  /* rows over those runs (sum of the exit counts) */
    double engine_seconds;
    double overhead_seconds;
} exitc_model_totals;
#define EXITC_MODEL_TOTALS_V1_SIZE (offsetof(exitc_model_totals, overhead_seconds) + sizeof(double))

EXITC_API exitc_status exitc_model_get_totals(const exitc_model* model, exitc_model_totals* out_totals);

/* Message of the last failing call on this thread ("" if none). Valid until the next call. */
EXITC_API const char* exitc_last_error_message(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* EXITC_EXITC_H */
