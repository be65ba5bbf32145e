/*
 * An in-memory AddCowIo: a growable byte buffer with a mutex per file, plus fault injection
 * (the Nth callback call, counted across every file sharing a `faults`, fails) and a
 * "durable" copy updated by each successful flush (to simulate a crash).
 */
#ifndef CAPI_MEMIO_H
#define CAPI_MEMIO_H

#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>

struct faults {
    atomic_long calls;  /* callback calls so far */
    long fail_at;       /* 0: never; else the call number (1-based) that fails */
    int sticky;         /* fail every call from fail_at on (a crash) */
    int err;            /* positive errno to return */
    atomic_long fired;  /* how many calls were failed */
};

typedef struct memfile {
    pthread_mutex_t mu;
    const char *name;
    uint8_t *data;
    size_t len, cap;
    uint8_t *dur; /* contents at the last successful flush */
    size_t dur_len;
    struct faults *faults; /* may be NULL */
    atomic_long past_end_reads; /* preadv calls reaching past the end (never asked for) */
    atomic_long bad_calls;      /* calls with a bad iov/iovcnt */
    atomic_long n_preadv, n_pwritev, n_flush, n_get_length, n_truncate;
} memfile;

void mf_init(memfile *m, const char *name, struct faults *f);
void mf_free(memfile *m);
void mf_set(memfile *m, const uint8_t *buf, size_t len); /* data and durable copy */
void mf_set_pat(memfile *m, size_t len, uint32_t seed);
void mf_set_zero(memfile *m, size_t len);
void mf_commit(memfile *m);     /* durable := data */
void mf_crash(memfile *m);      /* data := durable */
/* A layout-1 `.add-cow` file for an image of `size` bytes, every cluster unallocated. */
void mf_make_meta(memfile *m, const char *image_name, const char *backing_name, uint64_t size);

/* The callback table; with_truncate = 0 leaves truncate NULL. */
AddCowIo mf_io(memfile *m, int with_truncate);

#endif
