/* distillrec/c/distillrec.h
 *
 * The C interface of distillrec's serving engine, for hosts in C, Python (ctypes), Go, Rust,
 * Java (JNI/FFM) or any language that calls C. It wraps serve::Recommender over a checkpoint of
 * any of the library's models (the type is read from the file) and is built as the shared
 * library libdistillrec_c.so by the package (CMake target distillrec::c).
 *
 *   distillrec_error err;
 *   distillrec_model* model = NULL;
 *   if (distillrec_open("sasrec.safetensors", "fp32", 0, &model, &err) != DISTILLREC_OK) {
 *     fprintf(stderr, "%s\n", err.message);
 *   }
 *   int32_t history[] = {3, 17, 42};
 *   distillrec_scored_item top[10];
 *   size_t count = 0;
 *   distillrec_top_k(model, history, 3, 10, 1, top, &count, &err);
 *   distillrec_close(model);
 *
 * Rules:
 * - Every function returns a status; DISTILLREC_OK (0) on success. On failure the optional
 *   `err` (may be NULL) receives the code and a message naming what was wrong; no C++ exception
 *   ever crosses this interface, and the model stays usable after any error.
 * - Item ids are 1..num_items, as in the library. Results are written to caller-owned arrays.
 * - A model handle is safe to use from many threads at once (queries are read-only). A session
 *   handle must not be used by two threads at the same time, and belongs to the model that made
 *   or loaded it (another model's session is refused).
 * - Handles from distillrec_open / distillrec_session_create / distillrec_session_load are freed
 *   with distillrec_close / distillrec_session_free (NULL is accepted and ignored).
 */
#ifndef DISTILLREC_C_DISTILLREC_H
#define DISTILLREC_C_DISTILLREC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define DISTILLREC_C_EXPORT __attribute__((visibility("default")))
#else
#define DISTILLREC_C_EXPORT
#endif

typedef enum distillrec_status {
  DISTILLREC_OK = 0,
  DISTILLREC_ERROR_INVALID_ARGUMENT = 1, /* null or invalid handle or pointer, k out of range, ... */
  DISTILLREC_ERROR_OUT_OF_RANGE = 2,     /* an item id outside 1..num_items, an empty history */
  DISTILLREC_ERROR_IO = 3,               /* a file that cannot be read */
  DISTILLREC_ERROR_FORMAT = 4,           /* a malformed checkpoint or session blob, an unknown model */
  DISTILLREC_ERROR_BUFFER_TOO_SMALL = 5, /* the caller's buffer; the size needed is reported */
  DISTILLREC_ERROR_INTERNAL = 6          /* anything else (out of memory, ...) */
} distillrec_status;

typedef struct distillrec_error {
  int code;            /* a distillrec_status */
  char message[512];   /* NUL-terminated */
} distillrec_error;

typedef struct distillrec_scored_item {
  int32_t item;
  float score;
} distillrec_scored_item;

typedef struct distillrec_model distillrec_model;
typedef struct distillrec_session distillrec_session;

/* Opens a checkpoint of any of the library's models. precision: "fp32" (or NULL), "bf16" or
 * "int8" (serve/item_scorer.hpp). serial != 0: every call runs on the calling thread only (for
 * hosts with their own thread pools); 0: batch-free calls may use the library's threads. */
DISTILLREC_C_EXPORT distillrec_status distillrec_open(const char* checkpoint_path, const char* precision, int serial,
                                                      distillrec_model** model, distillrec_error* err);
DISTILLREC_C_EXPORT void distillrec_close(distillrec_model* model);

/* The catalogue size (items are 1..num_items), the model's name ("sasrec", ...), and what the
 * scoring policy runs on; the strings live as long as the model. */
DISTILLREC_C_EXPORT distillrec_status distillrec_model_info(const distillrec_model* model, int64_t* num_items,
                                                            const char** model_name, const char** scoring,
                                                            distillrec_error* err);

/* Top-k (1 <= k <= num_items) for a chronological history of `length` items; the history's items
 * are left out when exclude_history != 0. Writes *count <= k items to out[0..k-1], best first. */
DISTILLREC_C_EXPORT distillrec_status distillrec_top_k(const distillrec_model* model, const int32_t* history, size_t length,
                                                       int32_t k, int exclude_history, distillrec_scored_item* out,
                                                       size_t* count, distillrec_error* err);

/* The scores of `count` candidate items for a history, best first, into out[0..count-1]. */
DISTILLREC_C_EXPORT distillrec_status distillrec_rerank(const distillrec_model* model, const int32_t* history, size_t length,
                                                        const int32_t* candidates, size_t count, distillrec_scored_item* out,
                                                        distillrec_error* err);

/* Sessions: incremental serving (serve/session.hpp). */
DISTILLREC_C_EXPORT distillrec_status distillrec_session_create(const distillrec_model* model, distillrec_session** session,
                                                                distillrec_error* err);
DISTILLREC_C_EXPORT distillrec_status distillrec_session_append(const distillrec_model* model, distillrec_session* session,
                                                                int32_t item, distillrec_error* err);
DISTILLREC_C_EXPORT distillrec_status distillrec_session_top_k(const distillrec_model* model, const distillrec_session* session,
                                                               int32_t k, int exclude_history, distillrec_scored_item* out,
                                                               size_t* count, distillrec_error* err);
/* Writes the session's bytes to buffer (capacity bytes) and their size to *size; with a buffer
 * too small (or NULL) returns DISTILLREC_ERROR_BUFFER_TOO_SMALL and the size needed in *size. */
DISTILLREC_C_EXPORT distillrec_status distillrec_session_save(const distillrec_model* model, const distillrec_session* session,
                                                              void* buffer, size_t capacity, size_t* size, distillrec_error* err);
DISTILLREC_C_EXPORT distillrec_status distillrec_session_load(const distillrec_model* model, const void* bytes, size_t size,
                                                              distillrec_session** session, distillrec_error* err);
DISTILLREC_C_EXPORT void distillrec_session_free(distillrec_session* session);

#ifdef __cplusplus
}
#endif

#endif /* DISTILLREC_C_DISTILLREC_H */
