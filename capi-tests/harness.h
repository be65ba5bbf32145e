/*
 * capi-tests: the C conformance suite of libaddcow's stable C ABI (include/addcow.h).
 * Shared helpers: failure reporting, temporary files, byte patterns, image creation.
 */
#ifndef CAPI_HARNESS_H
#define CAPI_HARNESS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "addcow.h"

/* Layout 1's fixed geometry. */
#define CL ((uint64_t)65536)
#define SEC ((uint64_t)512)
#define HDR ((uint64_t)2560)

/* Exit codes of one case (meson: 77 = skipped). */
#define T_PASS 0
#define T_FAIL 1
#define T_SKIP 77

/* Name of the running case, for messages. */
extern const char *g_case;

/* Flags the I/O cases add to every image they open (`capi-tests --direct`: ADDCOW_OPEN_DIRECT,
 * the cases run again with direct I/O). */
extern uint32_t g_open_flags;

/* addcow_open with `flags | g_open_flags`. */
int open_img(const char *meta, uint32_t flags, AddCowImage **img);

void t_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void t_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *errname(long long rc);

/* Each check returns T_FAIL from the enclosing function (the runner removes the temp dir). */
#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            t_fail(__FILE__, __LINE__, "check failed: %s", #cond);                     \
            return T_FAIL;                                                             \
        }                                                                              \
    } while (0)

#define CHECKF(cond, ...)                                                              \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            t_fail(__FILE__, __LINE__, __VA_ARGS__);                                   \
            return T_FAIL;                                                             \
        }                                                                              \
    } while (0)

/* `expr` (evaluated once) must equal `want`; prints both and addcow_last_error(). */
#define CHECK_RC(expr, want)                                                           \
    do {                                                                               \
        long long rc_ = (long long)(expr);                                             \
        long long want_ = (long long)(want);                                           \
        if (rc_ != want_) {                                                            \
            t_fail(__FILE__, __LINE__, "%s returned %lld (%s), want %lld (%s); "       \
                   "addcow_last_error: \"%s\"", #expr, rc_, errname(rc_), want_,       \
                   errname(want_), addcow_last_error());                               \
            return T_FAIL;                                                             \
        }                                                                              \
    } while (0)

#define CHECK_OK(expr) CHECK_RC(expr, 0)

/* addcow_last_error() must contain `needle`. */
#define CHECK_MSG(needle)                                                              \
    CHECKF(strstr(addcow_last_error(), (needle)) != NULL,                              \
           "addcow_last_error() \"%s\" does not mention \"%s\"", addcow_last_error(),  \
           (needle))

/* A helper returning T_PASS / T_FAIL. */
#define TRY(expr)                                                                      \
    do {                                                                               \
        if ((expr) != T_PASS) {                                                        \
            t_fail(__FILE__, __LINE__, "from here: %s", #expr);                        \
            return T_FAIL;                                                             \
        }                                                                              \
    } while (0)

/* out = dir + "/" + name (PATH_MAX bytes). */
void pj(char *out, const char *dir, const char *name);

/* A deterministic, never-zero byte for (seed, offset): patterns are told apart from zeros. */
uint8_t pat(uint32_t seed, uint64_t off);
void fill_pat(uint8_t *buf, size_t len, uint32_t seed, uint64_t off);

/* Files. */
int write_file(const char *path, const void *buf, size_t len);
int write_pat_file(const char *path, uint64_t len, uint32_t seed);
uint8_t *read_whole(const char *path, size_t *len); /* malloc'd, NULL on error */
long long file_len(const char *path);
int pread_file(const char *path, uint64_t off, void *buf, size_t len);

/* addcow_create with the common fields; backing may be NULL. Returns the library's rc. */
int create_img(const char *meta, const char *image_file, const char *backing, uint64_t size);
AddCowCreateOptions create_opts(const char *image_file, const char *backing, uint64_t size);
/* dir/base.raw (`blen` bytes of pattern `seed`) and dir/img.add-cow over it (image file img.raw,
 * `size` bytes, 0: the backing file's length); the .add-cow path goes to `meta` (PATH_MAX
 * bytes). Returns T_PASS / T_FAIL. */
int make_overlay(const char *dir, char *meta, uint64_t blen, uint32_t seed, uint64_t size);

/* Compares `len` bytes; on a mismatch prints the first differing offset (base + i). */
int cmp_bytes(const uint8_t *got, const uint8_t *want, size_t len, uint64_t base,
              const char *what);
/* The file at `path` must hold exactly the `len` bytes of `want`. */
int file_is(const char *path, const uint8_t *want, size_t len, const char *what);
/* Reads [off, off+len) through the library and compares. */
int read_expect(AddCowImage *img, uint64_t off, const uint8_t *want, size_t len,
                const char *what);
int all_zero(const uint8_t *p, size_t len);

void *xmalloc(size_t n);
void *xcalloc(size_t n);


/* Shared by t_iotests.c and t_io.c: one round of qemu-iotests 038 on an open image whose
 * unallocated clusters read as `base` (size bytes, a multiple of CL, at least 6 clusters).
 * `nthreads` writers each write their own sectors of clusters 1..4 at once (2 of every 3
 * sectors, slots shifted by `shift` sectors so that writes cross cluster boundaries), while
 * two readers check that every sector always reads its old or its new content. On return
 * `expect` (size bytes) holds what the image must read. */
int cow038_round(AddCowImage *img, const uint8_t *base, uint64_t size, int shift,
                 int nthreads, uint8_t *expect);
#endif
