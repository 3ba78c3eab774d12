/* The C interface from C: every call's status, the results, and bad input (null and foreign
 * handles, ids out of range, k of 0 or beyond the catalogue, empty histories, corrupt, truncated
 * and foreign session blobs, missing and malformed checkpoints), the model usable after each.
 *
 *   test_c_api MODEL.safetensors OTHER_MODEL.safetensors NOT_A_CHECKPOINT */
#include "distillrec/c/distillrec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define CHECK(condition)                                                   \
  do {                                                                     \
    if (!(condition)) {                                                    \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #condition); \
      ++failures;                                                          \
    }                                                                      \
  } while (0)

/* The call returns `code` and the message contains `text`. */
#define CHECK_STATUS(call, expected_, text_)                                                         \
  do {                                                                                              \
    distillrec_status got_ = (call);                                                                \
    if (got_ != (expected_) || err.code != (int)(expected_) || strstr(err.message, (text_)) == NULL) { \
      fprintf(stderr, "%s:%d: %s returned %d (%s), expected %d with \"%s\"\n", __FILE__, __LINE__, #call, \
              (int)got_, err.message, (int)(expected_), (text_));                                   \
      ++failures;                                                                             \
    }                                                                                         \
  } while (0)

int main(int argc, char** argv) {
  distillrec_error err;
  distillrec_model* model = NULL;
  distillrec_model* other = NULL;
  distillrec_session* session = NULL;
  distillrec_session* foreign = NULL;
  distillrec_session* loaded = NULL;
  distillrec_scored_item top[10], again[10];
  size_t count = 0, count_again = 0, size = 0, needed = 0;
  int64_t num_items = 0;
  const char* name = NULL;
  const char* scoring = NULL;
  int32_t history[] = {3, 17, 42, 5};
  int32_t bad_history[] = {3, 0};
  int32_t candidates[] = {8, 9, 10};
  char* blob = NULL;
  size_t i;
  if (argc != 4) {
    fprintf(stderr, "usage: %s MODEL OTHER_MODEL NOT_A_CHECKPOINT\n", argv[0]);
    return 2;
  }

  CHECK(distillrec_open(argv[1], "int8", 1, &model, &err) == DISTILLREC_OK);
  if (model == NULL) {
    fprintf(stderr, "cannot open %s: %s\n", argv[1], err.message);
    return 1;
  }
  CHECK(distillrec_model_info(model, &num_items, &name, &scoring, &err) == DISTILLREC_OK);
  CHECK(num_items > 10);
  CHECK(name != NULL && strlen(name) > 0);
  CHECK(scoring != NULL && strstr(scoring, "int8") != NULL);

  /* Top-k: k items, best first, none from the history. */
  CHECK(distillrec_top_k(model, history, 4, 10, 1, top, &count, &err) == DISTILLREC_OK);
  CHECK(count == 10);
  for (i = 0; i < count; ++i) {
    CHECK(top[i].item >= 1 && top[i].item <= num_items);
    CHECK(top[i].item != 3 && top[i].item != 17 && top[i].item != 42 && top[i].item != 5);
    if (i > 0) CHECK(top[i - 1].score >= top[i].score);
  }
  /* Re-ranking: the candidates' scores, best first. */
  CHECK(distillrec_rerank(model, history, 4, candidates, 3, again, &err) == DISTILLREC_OK);
  CHECK(again[0].score >= again[1].score && again[1].score >= again[2].score);

  /* Bad queries: a code and a message each; the model keeps working. */
  CHECK_STATUS(distillrec_top_k(model, history, 4, 0, 1, top, &count, &err), DISTILLREC_ERROR_INVALID_ARGUMENT, "k must be");
  CHECK(count == 0);
  CHECK_STATUS(distillrec_top_k(model, history, 4, (int32_t)num_items + 1, 1, top, &count, &err), DISTILLREC_ERROR_INVALID_ARGUMENT,
               "k must be in 1..");
  CHECK_STATUS(distillrec_top_k(model, bad_history, 2, 10, 1, top, &count, &err), DISTILLREC_ERROR_OUT_OF_RANGE, "item 0 at position 1");
  CHECK_STATUS(distillrec_top_k(model, history, 0, 10, 1, top, &count, &err), DISTILLREC_ERROR_OUT_OF_RANGE, "empty");
  CHECK_STATUS(distillrec_top_k(NULL, history, 4, 10, 1, top, &count, &err), DISTILLREC_ERROR_INVALID_ARGUMENT, "NULL");
  CHECK_STATUS(distillrec_top_k(model, NULL, 4, 10, 1, top, &count, &err), DISTILLREC_ERROR_INVALID_ARGUMENT, "history is NULL");
  CHECK_STATUS(distillrec_top_k(model, history, 4, 10, 1, NULL, &count, &err), DISTILLREC_ERROR_INVALID_ARGUMENT, "output array");
  CHECK_STATUS(distillrec_rerank(model, history, 4, bad_history, 2, again, &err), DISTILLREC_ERROR_OUT_OF_RANGE, "candidate item 0");
  CHECK(distillrec_top_k(model, history, 4, 10, 1, again, &count_again, NULL) == DISTILLREC_OK); /* err may be NULL */
  CHECK(count_again == 10 && memcmp(top, again, sizeof top) == 0);

  /* Sessions: the same history appended event by event gives the same top-10. */
  CHECK(distillrec_session_create(model, &session, &err) == DISTILLREC_OK);
  CHECK_STATUS(distillrec_session_top_k(model, session, 10, 1, top, &count, &err), DISTILLREC_ERROR_OUT_OF_RANGE, "no events");
  for (i = 0; i < 4; ++i) CHECK(distillrec_session_append(model, session, history[i], &err) == DISTILLREC_OK);
  CHECK_STATUS(distillrec_session_append(model, session, (int32_t)num_items + 1, &err), DISTILLREC_ERROR_OUT_OF_RANGE, "outside 1..");
  CHECK(distillrec_session_top_k(model, session, 10, 1, top, &count, &err) == DISTILLREC_OK);
  CHECK(distillrec_top_k(model, history, 4, 10, 1, again, &count_again, &err) == DISTILLREC_OK);
  CHECK(count == 10 && count_again == 10);
  for (i = 0; i < 10; ++i) CHECK(top[i].item == again[i].item);
  /* A session handle where a model belongs, and the reverse. */
  CHECK_STATUS(distillrec_top_k((const distillrec_model*)(const void*)session, history, 4, 10, 1, top, &count, &err),
               DISTILLREC_ERROR_INVALID_ARGUMENT, "not a live model");
  CHECK_STATUS(distillrec_session_append(model, (distillrec_session*)(void*)model, 3, &err), DISTILLREC_ERROR_INVALID_ARGUMENT,
               "not a live session");
  CHECK_STATUS(distillrec_session_append(model, NULL, 3, &err), DISTILLREC_ERROR_INVALID_ARGUMENT, "NULL");

  /* Save: the size first, then the bytes; load them back. */
  CHECK_STATUS(distillrec_session_save(model, session, NULL, 0, &needed, &err), DISTILLREC_ERROR_BUFFER_TOO_SMALL, "needs");
  CHECK(needed > 0);
  blob = (char*)malloc(needed);
  CHECK(distillrec_session_save(model, session, blob, needed, &size, &err) == DISTILLREC_OK);
  CHECK(size == needed);
  CHECK(distillrec_session_load(model, blob, size, &loaded, &err) == DISTILLREC_OK);
  CHECK(distillrec_session_top_k(model, loaded, 10, 1, again, &count_again, &err) == DISTILLREC_OK);
  for (i = 0; i < 10; ++i) CHECK(top[i].item == again[i].item && top[i].score == again[i].score);
  distillrec_session_free(loaded);
  loaded = NULL;
  CHECK_STATUS(distillrec_session_load(model, blob, size - 5, &loaded, &err), DISTILLREC_ERROR_FORMAT, "checksum");
  CHECK(loaded == NULL);
  blob[size / 2] = (char)(blob[size / 2] ^ 0x5a);
  CHECK_STATUS(distillrec_session_load(model, blob, size, &loaded, &err), DISTILLREC_ERROR_FORMAT, "session blob rejected");
  CHECK_STATUS(distillrec_session_load(model, "garbage", 7, &loaded, &err), DISTILLREC_ERROR_FORMAT, "session blob rejected");
  blob[size / 2] = (char)(blob[size / 2] ^ 0x5a);

  /* Another model: its sessions and blobs are refused. */
  CHECK(distillrec_open(argv[2], NULL, 0, &other, &err) == DISTILLREC_OK);
  CHECK(distillrec_session_create(other, &foreign, &err) == DISTILLREC_OK);
  CHECK(distillrec_session_append(other, foreign, 3, &err) == DISTILLREC_OK);
  CHECK_STATUS(distillrec_session_top_k(model, foreign, 10, 1, top, &count, &err), DISTILLREC_ERROR_INVALID_ARGUMENT,
               "belongs to another model");
  CHECK_STATUS(distillrec_session_load(other, blob, size, &loaded, &err), DISTILLREC_ERROR_FORMAT, "another model");

  /* Opening: a missing file, a file that is not a checkpoint, an unknown precision. */
  {
    distillrec_model* none = NULL;
    CHECK_STATUS(distillrec_open("/nonexistent/model.safetensors", NULL, 0, &none, &err), DISTILLREC_ERROR_IO, "/nonexistent/model");
    CHECK(none == NULL);
    CHECK(distillrec_open(argv[3], NULL, 0, &none, &err) == DISTILLREC_ERROR_FORMAT);
    CHECK(none == NULL && strlen(err.message) > 0);
    CHECK_STATUS(distillrec_open(argv[1], "fp16", 0, &none, &err), DISTILLREC_ERROR_INVALID_ARGUMENT, "fp16");
    CHECK_STATUS(distillrec_open(NULL, NULL, 0, &none, &err), DISTILLREC_ERROR_INVALID_ARGUMENT, "path is NULL");
  }

  /* Still usable after all of that. */
  CHECK(distillrec_top_k(model, history, 4, 5, 1, top, &count, &err) == DISTILLREC_OK && count == 5);

  free(blob);
  distillrec_session_free(session);
  distillrec_session_free(foreign);
  distillrec_session_free(NULL);
  distillrec_close(other);
  distillrec_close(model);
  distillrec_close(NULL);
  if (failures > 0) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("C interface: all checks passed\n");
  return 0;
}
