/*
 * The mapping core (addcow_core_*): a host written in C drives it, with the `.add-cow` file in
 * memio (fault injection, a durable copy) and the image and backing files as plain buffers
 * that the host reads and writes itself.
 */
#include "memio.h"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

static int dummy_handle;
#define SENTINEL ((void *)&dummy_handle)

/* Clusters per bitmap page (4 KiB of bits). */
#define PAGE_CLUSTERS ((uint64_t)4096 * 8)

struct host {
    struct faults f;
    memfile meta;
    AddCowIo mio;
    uint64_t size, blen;
    uint8_t *image;   /* size bytes; NULL for a host that writes no data */
    uint8_t *backing; /* blen bytes */
    AddCowCore *core;
};

/* A host over a fresh `.add-cow` file for an image of `size` bytes and a backing file of
 * `blen` bytes (a pattern), with image buffers unless `no_data`. Opens no core. */
static void host_init(struct host *h, uint64_t size, uint64_t blen, int no_data)
{
    memset(h, 0, sizeof *h);
    mf_init(&h->meta, "meta", &h->f);
    mf_make_meta(&h->meta, "image.raw", "base.raw", size);
    h->mio = mf_io(&h->meta, 0);
    h->size = size;
    h->blen = blen;
    if (!no_data) {
        h->image = xcalloc(size);
        h->backing = xmalloc(blen);
        fill_pat(h->backing, blen, 1, 0);
    }
}

static void host_free(struct host *h)
{
    mf_free(&h->meta);
    free(h->image);
    free(h->backing);
}

static AddCowOpenOptions opts_of(uint32_t flags, uint64_t cache)
{
    AddCowOpenOptions o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.flags = flags;
    o.bitmap_cache_size = cache;
    return o;
}

/* Opens h->core read-write over the backing file. */
static int host_open(struct host *h, uint64_t cache)
{
    AddCowOpenOptions o = opts_of(ADDCOW_OPEN_RDWR, cache);
    h->core = SENTINEL;
    CHECK_OK(addcow_core_open(&h->mio, h->size, &o, &h->core));
    CHECK(h->core != NULL && h->core != SENTINEL);
    CHECK_OK(addcow_core_set_backing_length(h->core, (int64_t)h->blen));
    return T_PASS;
}

static AddCowWriteStep new_step(void)
{
    AddCowWriteStep s;
    memset(&s, 0xA5, sizeof s);
    s.struct_size = sizeof s;
    return s;
}

/* Writes the image range of an ALLOCATE step, as the contract says: head from the backing
 * file and zeros, the guest's bytes, tail from the backing file and zeros. */
static int write_cluster(struct host *h, uint64_t off, const AddCowWriteStep *s,
                         const uint8_t *data)
{
    uint64_t end = off + s->len;
    CHECK(s->cluster_start + s->head_backing + s->head_zero == off);
    CHECK(end + s->tail_backing + s->tail_zero == s->cluster_end);
    CHECK(s->cluster_start + s->head_backing <= h->blen || s->head_backing == 0);
    CHECK(end + s->tail_backing <= h->blen || s->tail_backing == 0);
    uint8_t *p = h->image + s->cluster_start;
    memcpy(p, h->backing + s->cluster_start, s->head_backing);
    memset(p + s->head_backing, 0, s->head_zero);
    memcpy(h->image + off, data, s->len);
    memcpy(h->image + end, h->backing + end, s->tail_backing);
    memset(h->image + end + s->tail_backing, 0, s->tail_zero);
    return T_PASS;
}

/* A whole guest write, step by step; busy is a failure (one caller only). */
static int host_write(struct host *h, uint64_t off, const uint8_t *data, uint64_t len)
{
    uint64_t pos = 0;
    while (pos < len) {
        AddCowWriteStep s = new_step();
        CHECK_OK(addcow_core_begin_write(h->core, off + pos, len - pos, &s));
        CHECK(s.len >= 1 && s.len <= len - pos);
        if (s.kind == ADDCOW_STEP_IN_PLACE) {
            CHECK(s.txn == NULL);
            memcpy(h->image + off + pos, data + pos, s.len);
        } else {
            CHECKF(s.kind == ADDCOW_STEP_ALLOCATE, "step kind %u", s.kind);
            TRY(write_cluster(h, off + pos, &s, data + pos));
            CHECK_OK(addcow_core_commit(h->core, s.txn));
        }
        pos += s.len;
    }
    return T_PASS;
}

/* Reads [off, off + len) as the map says. */
static int host_read(struct host *h, uint64_t off, uint8_t *buf, uint64_t len)
{
    uint64_t pos = 0;
    while (pos < len) {
        uint64_t n = 0;
        int kind = addcow_core_map(h->core, off + pos, len - pos, &n);
        CHECKF(kind > 0 && n >= 1 && n <= len - pos, "map(%llu) = %d, %llu",
               (unsigned long long)(off + pos), kind, (unsigned long long)n);
        if (kind == ADDCOW_MAP_DATA)
            memcpy(buf + pos, h->image + off + pos, n);
        else if (kind == ADDCOW_MAP_BACKING) {
            CHECK(off + pos + n <= h->blen);
            memcpy(buf + pos, h->backing + off + pos, n);
        } else {
            CHECK(kind == ADDCOW_MAP_ZERO);
            memset(buf + pos, 0, n);
        }
        pos += n;
    }
    return T_PASS;
}

static int read_model(struct host *h, const uint8_t *model, const char *what)
{
    uint8_t *got = xmalloc(h->size);
    int r = host_read(h, 0, got, h->size);
    if (r == T_PASS)
        r = cmp_bytes(got, model, h->size, 0, what);
    free(got);
    return r;
}

/* The flush sequence; every step succeeds. */
static int host_flush(struct host *h)
{
    AddCowWriteBack *wb = SENTINEL;
    uint64_t g = 0;
    CHECK_OK(addcow_core_writeback_begin(h->core, &wb, &g));
    CHECK(wb != NULL && wb != SENTINEL);
    /* (flush the image file: a buffer here) */
    CHECK_OK(addcow_core_writeback_write(h->core, wb));
    CHECK_OK(h->mio.flush(h->mio.opaque));
    CHECK_OK(addcow_core_writeback_end(h->core, wb, 1));
    return T_PASS;
}

/* The kind of the run at `off` and its length. */
static int map_is(AddCowCore *core, uint64_t off, uint64_t bytes, int kind, uint64_t len)
{
    uint64_t n = 12345;
    int got = addcow_core_map(core, off, bytes, &n);
    CHECKF(got == kind && n == len, "map(%llu, %llu) = %d (%s), %llu; want %d, %llu",
           (unsigned long long)off, (unsigned long long)bytes, got,
           got < 0 ? addcow_last_error() : "", (unsigned long long)n, kind,
           (unsigned long long)len);
    return T_PASS;
}

/* A fresh core over the `.add-cow` file's bytes: cluster `i` from `base` maps as `kinds[i]`. */
static int reopen_map(struct host *h, uint64_t base, const uint8_t *kinds, int n)
{
    AddCowCore *fresh;
    CHECK_OK(addcow_core_open(&h->mio, h->size, NULL, &fresh));
    CHECK_OK(addcow_core_set_backing_length(fresh, (int64_t)h->blen));
    for (int c = 0; c < n; c++)
        TRY(map_is(fresh, base + (uint64_t)c * CL, CL, kinds[c], CL));
    CHECK_OK(addcow_core_close(fresh));
    return T_PASS;
}

#define STEP_IS(s, k, l, cs, ce, hb, hz, tb, tz)                                           \
    do {                                                                                   \
        CHECKF((s).kind == (k) && (s).len == (l) && (s).cluster_start == (cs) &&          \
                   (s).cluster_end == (ce) && (s).head_backing == (hb) &&                 \
                   (s).head_zero == (hz) && (s).tail_backing == (tb) &&                   \
                   (s).tail_zero == (tz) && (s).struct_size == sizeof(s),                 \
               "step kind %u len %llu cluster %llu..%llu head %llu+%llu tail %llu+%llu",  \
               (s).kind, (unsigned long long)(s).len,                                     \
               (unsigned long long)(s).cluster_start, (unsigned long long)(s).cluster_end, \
               (unsigned long long)(s).head_backing, (unsigned long long)(s).head_zero,   \
               (unsigned long long)(s).tail_backing, (unsigned long long)(s).tail_zero);  \
    } while (0)

/* ------------------------------------------------------------------ maps */

int case_core_map(const char *dir)
{
    (void)dir;
    struct host h;
    host_init(&h, 4 * CL + 1000, CL + 300, 0);
    AddCowCore *core = SENTINEL;
    CHECK_OK(addcow_core_open(&h.mio, h.size, NULL, &core)); /* read-only */
    CHECK_RC(addcow_core_get_length(core), 4 * CL + 1000);
    CHECK_RC(addcow_core_get_cluster_size(core), CL);
    /* No backing data until the host sets it. */
    TRY(map_is(core, 0, h.size, ADDCOW_MAP_ZERO, 4 * CL + 1000));
    CHECK_OK(addcow_core_set_backing_length(core, (int64_t)h.blen));
    TRY(map_is(core, 0, h.size, ADDCOW_MAP_BACKING, CL + 300));
    TRY(map_is(core, 10, 5, ADDCOW_MAP_BACKING, 5));
    TRY(map_is(core, CL + 300, h.size, ADDCOW_MAP_ZERO, 3 * CL + 700));
    TRY(map_is(core, h.size - 1, 100, ADDCOW_MAP_ZERO, 1));
    TRY(map_is(core, h.size, 1, 0, 0));
    TRY(map_is(core, h.size + CL, 1, 0, 0));
    TRY(map_is(core, 0, 0, 0, 0));
    CHECK_OK(addcow_core_close(core));

    /* Allocated clusters map as data; -1 detaches the backing file. */
    h.meta.data[HDR] = 0x06; /* clusters 1 and 2 */
    CHECK_OK(addcow_core_open(&h.mio, h.size, NULL, &core));
    CHECK_OK(addcow_core_set_backing_length(core, (int64_t)h.blen));
    TRY(map_is(core, 0, h.size, ADDCOW_MAP_BACKING, CL));
    TRY(map_is(core, CL - 1, h.size, ADDCOW_MAP_BACKING, 1));
    TRY(map_is(core, CL, h.size, ADDCOW_MAP_DATA, 2 * CL));
    TRY(map_is(core, 3 * CL, h.size, ADDCOW_MAP_ZERO, CL + 1000));
    CHECK_OK(addcow_core_set_backing_length(core, -1));
    TRY(map_is(core, 0, h.size, ADDCOW_MAP_ZERO, CL));
    CHECK_OK(addcow_core_set_backing_length(core, 0));
    TRY(map_is(core, 0, h.size, ADDCOW_MAP_ZERO, CL));
    CHECK_OK(addcow_core_close(core));
    CHECK(atomic_load(&h.meta.n_pwritev) == 0 && atomic_load(&h.meta.n_flush) == 0);
    host_free(&h);
    return T_PASS;
}

/* ------------------------------------------------------------------ allocating writes */

int case_core_allocate_head_tail(const char *dir)
{
    (void)dir;
    struct host h;
    host_init(&h, 4 * CL + 1000, CL + 300, 0);
    TRY(host_open(&h, 0));
    uint8_t *model = xcalloc(h.size);
    memcpy(model, h.backing, h.blen);
    uint8_t data[3 * 65536];
    fill_pat(data, sizeof data, 2, 0);

    /* Inside cluster 1: the backing data ends inside the head. */
    AddCowWriteStep s = new_step();
    CHECK_OK(addcow_core_begin_write(h.core, CL + 500, 10, &s));
    STEP_IS(s, ADDCOW_STEP_ALLOCATE, 10, CL, 2 * CL, 300, 200, 0, CL - 510);
    CHECK(s.generation == 0 && s.txn != NULL);
    TRY(write_cluster(&h, CL + 500, &s, data));
    CHECK_OK(addcow_core_commit(h.core, s.txn));
    memcpy(model + CL + 500, data, 10);

    /* Inside cluster 0: head and tail both from the backing file. */
    s = new_step();
    CHECK_OK(addcow_core_begin_write(h.core, 100, 50, &s));
    STEP_IS(s, ADDCOW_STEP_ALLOCATE, 50, 0, CL, 100, 0, CL - 150, 0);
    TRY(write_cluster(&h, 100, &s, data));
    CHECK_OK(addcow_core_commit(h.core, s.txn));
    memcpy(model + 100, data, 50);

    /* The partial last cluster: its end is the image end. */
    s = new_step();
    CHECK_OK(addcow_core_begin_write(h.core, 4 * CL + 10, 5, &s));
    STEP_IS(s, ADDCOW_STEP_ALLOCATE, 5, 4 * CL, 4 * CL + 1000, 0, 10, 0, 985);
    TRY(write_cluster(&h, 4 * CL + 10, &s, data));
    CHECK_OK(addcow_core_commit(h.core, s.txn));
    memcpy(model + 4 * CL + 10, data, 5);

    /* Over clusters 1..3: in place over 1, then one transaction for 2 and 3, aligned. */
    s = new_step();
    CHECK_OK(addcow_core_begin_write(h.core, CL + 7, 3 * CL - 7, &s));
    STEP_IS(s, ADDCOW_STEP_IN_PLACE, CL - 7, 0, 0, 0, 0, 0, 0);
    CHECK(s.txn == NULL);
    s = new_step();
    CHECK_OK(addcow_core_begin_write(h.core, 2 * CL, 2 * CL, &s));
    STEP_IS(s, ADDCOW_STEP_ALLOCATE, 2 * CL, 2 * CL, 4 * CL, 0, 0, 0, 0);
    CHECK_OK(addcow_core_abort(h.core, s.txn));
    TRY(host_write(&h, CL + 7, data, 3 * CL - 7));
    memcpy(model + CL + 7, data, 3 * CL - 7);

    TRY(map_is(h.core, 0, h.size, ADDCOW_MAP_DATA, h.size));
    TRY(read_model(&h, model, "after allocating writes"));
    TRY(cmp_bytes(h.image, model, h.size, 0, "image buffer"));
    CHECK_OK(addcow_core_close(h.core));
    free(model);
    host_free(&h);
    return T_PASS;
}

/* A second write into a cluster being allocated is busy; after the commit it goes in place
 * and the first write's bytes stay. */
int case_core_busy_overlap(const char *dir)
{
    (void)dir;
    struct host h;
    host_init(&h, 4 * CL, 4 * CL, 0);
    TRY(host_open(&h, 0));
    uint8_t *model = xmalloc(h.size);
    memcpy(model, h.backing, h.size);
    uint8_t a[100], b[100];
    fill_pat(a, sizeof a, 3, 0);
    fill_pat(b, sizeof b, 4, 0);

    AddCowWriteStep first = new_step(), second = new_step(), other = new_step();
    CHECK_OK(addcow_core_begin_write(h.core, CL + 1000, 100, &first));
    CHECK(first.kind == ADDCOW_STEP_ALLOCATE);
    uint64_t g = addcow_core_generation(h.core);
    CHECK_OK(addcow_core_begin_write(h.core, CL + 1050, 100, &second));
    STEP_IS(second, ADDCOW_STEP_BUSY, 0, 0, 0, 0, 0, 0, 0);
    CHECK(second.generation == g && second.txn == NULL);
    /* A write whose unallocated run reaches the claimed cluster is busy as a whole; other
     * clusters are not. */
    CHECK_OK(addcow_core_begin_write(h.core, 0, 2 * CL, &second));
    CHECK(second.kind == ADDCOW_STEP_BUSY && second.generation == g);
    CHECK_OK(addcow_core_begin_write(h.core, 0, CL, &second));
    CHECK(second.kind == ADDCOW_STEP_ALLOCATE && second.len == CL);
    CHECK_OK(addcow_core_abort(h.core, second.txn));
    CHECK(addcow_core_generation(h.core) != g);
    g = addcow_core_generation(h.core);
    CHECK_OK(addcow_core_begin_write(h.core, CL, 1, &second));
    CHECK(second.kind == ADDCOW_STEP_BUSY && second.generation == g);
    CHECK_OK(addcow_core_begin_write(h.core, 3 * CL, 1, &other));
    CHECK(other.kind == ADDCOW_STEP_ALLOCATE);

    /* The first writer finishes; the generation moves; the second goes in place. */
    TRY(write_cluster(&h, CL + 1000, &first, a));
    CHECK_OK(addcow_core_commit(h.core, first.txn));
    memcpy(model + CL + 1000, a, 100);
    CHECK(addcow_core_generation(h.core) != g);
    second = new_step();
    CHECK_OK(addcow_core_begin_write(h.core, CL + 1050, 100, &second));
    STEP_IS(second, ADDCOW_STEP_IN_PLACE, 100, 0, 0, 0, 0, 0, 0);
    memcpy(h.image + CL + 1050, b, 100);
    memcpy(model + CL + 1050, b, 100);
    CHECK_OK(addcow_core_abort(h.core, other.txn));
    TRY(read_model(&h, model, "after the busy write"));
    CHECK_OK(addcow_core_close(h.core));
    free(model);
    host_free(&h);
    return T_PASS;
}

int case_core_abort(const char *dir)
{
    (void)dir;
    struct host h;
    host_init(&h, 2 * CL, 2 * CL, 0);
    TRY(host_open(&h, 0));
    uint64_t g = addcow_core_generation(h.core);
    AddCowWriteStep s = new_step();
    CHECK_OK(addcow_core_begin_write(h.core, 10, 10, &s));
    CHECK(s.kind == ADDCOW_STEP_ALLOCATE);
    /* The host's image write failed: abort. */
    CHECK_OK(addcow_core_abort(h.core, s.txn));
    CHECK(addcow_core_generation(h.core) != g);
    TRY(map_is(h.core, 0, h.size, ADDCOW_MAP_BACKING, h.size));
    s = new_step();
    CHECK_OK(addcow_core_begin_write(h.core, 10, 10, &s));
    STEP_IS(s, ADDCOW_STEP_ALLOCATE, 10, 0, CL, 10, 0, CL - 20, 0);
    CHECK_OK(addcow_core_abort(h.core, s.txn));
    /* Nothing was dirtied: the write-back has no page. */
    AddCowWriteBack *wb;
    CHECK_OK(addcow_core_writeback_begin(h.core, &wb, &g));
    CHECK_RC(addcow_writeback_pages(wb), 0);
    CHECK_OK(addcow_core_writeback_end(h.core, wb, 1));
    CHECK_OK(addcow_core_close(h.core));
    host_free(&h);
    return T_PASS;
}

/* A commit whose bitmap page must be read again, and the read fails: no cluster of the
 * transaction is allocated, and the write can be run again. */
int case_core_commit_fails(const char *dir)
{
    (void)dir;
    struct host h;
    /* Two bitmap pages; room for one in memory, so that the second evicts the first. */
    host_init(&h, 2 * PAGE_CLUSTERS * CL, 0, 1);
    h.blen = h.size;
    TRY(host_open(&h, 1));
    const uint64_t at = PAGE_CLUSTERS * CL - 10; /* clusters 32767 (page 0) and 32768 */
    AddCowWriteStep s = new_step();
    CHECK_OK(addcow_core_begin_write(h.core, at, 20, &s));
    STEP_IS(s, ADDCOW_STEP_ALLOCATE, 20, at - CL + 10, at + CL + 10, CL - 10, 0, CL - 10, 0);
    /* (the image write: this host keeps no data) */
    h.f.err = EIO;
    h.f.fail_at = atomic_load(&h.f.calls) + 1;
    CHECK_RC(addcow_core_commit(h.core, s.txn), -EIO);
    CHECKF(atomic_load(&h.f.fired) == 1, "the commit read no bitmap page: nothing failed");
    h.f.fail_at = 0;
    TRY(map_is(h.core, at - CL + 10, 2 * CL, ADDCOW_MAP_BACKING, 2 * CL));
    TRY(host_flush(&h));
    const uint8_t none[2] = {ADDCOW_MAP_BACKING, ADDCOW_MAP_BACKING};
    TRY(reopen_map(&h, at - CL + 10, none, 2));
    /* The transaction is gone (its claim released): the write runs again. */
    s = new_step();
    CHECK_OK(addcow_core_begin_write(h.core, at, 20, &s));
    CHECK(s.kind == ADDCOW_STEP_ALLOCATE);
    CHECK_OK(addcow_core_commit(h.core, s.txn));
    TRY(map_is(h.core, at - CL + 10, 2 * CL, ADDCOW_MAP_DATA, 2 * CL));
    TRY(host_flush(&h));
    CHECK(h.meta.dur[HDR + 4095] == 0x80 && h.meta.dur[HDR + 4096] == 0x01);
    const uint8_t both[2] = {ADDCOW_MAP_DATA, ADDCOW_MAP_DATA};
    TRY(reopen_map(&h, at - CL + 10, both, 2));
    CHECK_OK(addcow_core_close(h.core));
    host_free(&h);
    return T_PASS;
}

/* ------------------------------------------------------------------ write-back */

int case_core_writeback(const char *dir)
{
    (void)dir;
    struct host h;
    host_init(&h, 4 * CL, 4 * CL, 0);
    TRY(host_open(&h, 0));
    uint8_t data[10];
    fill_pat(data, sizeof data, 5, 0);
    TRY(host_write(&h, 0, data, 10));
    TRY(host_write(&h, 2 * CL + 5, data, 10));

    /* A failing metadata write: end not durable. */
    AddCowWriteBack *wb = SENTINEL, *other = SENTINEL;
    uint64_t g = 0, busy_g = 0;
    CHECK_OK(addcow_core_writeback_begin(h.core, &wb, &g));
    CHECK(wb != NULL && wb != SENTINEL);
    CHECK_RC(addcow_writeback_pages(wb), 1);
    g = addcow_core_generation(h.core);
    CHECK_RC(addcow_core_writeback_begin(h.core, &other, &busy_g), ADDCOW_BUSY);
    CHECK(other == NULL && busy_g == g);
    CHECK_RC(addcow_core_close(h.core), -EBUSY); /* a write-back is open */
    h.f.err = EIO;
    h.f.fail_at = atomic_load(&h.f.calls) + 1;
    CHECK_RC(addcow_core_writeback_write(h.core, wb), -EIO);
    h.f.fail_at = 0;
    CHECK_OK(addcow_core_writeback_end(h.core, wb, 0));
    CHECK(addcow_core_generation(h.core) != g);
    CHECK(h.meta.data[HDR] == 0);

    /* The pages are written again; the write succeeds, the host's flush of the .add-cow file
     * fails: not durable either. */
    CHECK_OK(addcow_core_writeback_begin(h.core, &wb, &g));
    CHECK_RC(addcow_writeback_pages(wb), 1);
    CHECK_OK(addcow_core_writeback_write(h.core, wb));
    CHECK(h.meta.data[HDR] == 0x05);
    h.f.fail_at = atomic_load(&h.f.calls) + 1;
    CHECK_RC(h.mio.flush(h.mio.opaque), -EIO);
    h.f.fail_at = 0;
    CHECK(h.meta.dur[HDR] == 0);
    CHECK_OK(addcow_core_writeback_end(h.core, wb, 0));

    /* Redone, durable this time; then nothing is left. */
    CHECK_OK(addcow_core_writeback_begin(h.core, &wb, &g));
    CHECK_RC(addcow_writeback_pages(wb), 1);
    CHECK_OK(addcow_core_writeback_write(h.core, wb));
    CHECK_OK(h.mio.flush(h.mio.opaque));
    CHECK_OK(addcow_core_writeback_end(h.core, wb, 1));
    CHECK(h.meta.dur[HDR] == 0x05);
    CHECK_OK(addcow_core_writeback_begin(h.core, &wb, &g));
    CHECK_RC(addcow_writeback_pages(wb), 0);
    CHECK_OK(addcow_core_writeback_end(h.core, wb, 1));

    /* Cluster 3 is committed but never written back. A fresh core over the durable bytes sees
     * exactly what was written back. */
    TRY(host_write(&h, 3 * CL, data, 10));
    mf_crash(&h.meta);
    const uint8_t kinds[4] = {ADDCOW_MAP_DATA, ADDCOW_MAP_BACKING, ADDCOW_MAP_DATA,
                              ADDCOW_MAP_BACKING};
    TRY(reopen_map(&h, 0, kinds, 4));
    /* The close writes nothing back: the first core's cluster 3 is lost with it. */
    CHECK_OK(addcow_core_close(h.core));
    TRY(reopen_map(&h, 0, kinds, 4));
    host_free(&h);
    return T_PASS;
}

/* ------------------------------------------------------------------ arguments */

int case_core_readonly(const char *dir)
{
    (void)dir;
    struct host h;
    host_init(&h, 2 * CL, CL, 0);
    AddCowCore *core;
    AddCowOpenOptions o = opts_of(0, 0);
    CHECK_OK(addcow_core_open(&h.mio, h.size, &o, &core));
    AddCowWriteStep s = new_step();
    CHECK_RC(addcow_core_begin_write(core, 0, 1, &s), -EPERM);
    STEP_IS(s, 0, 0, 0, 0, 0, 0, 0, 0);
    CHECK(s.txn == NULL && s.generation == 0);
    CHECK(strstr(addcow_last_error(), "read-only") != NULL);
    CHECK_OK(addcow_core_close(core));
    /* A read-only core needs no pwritev; a read-write one does. No flush, no truncate. */
    AddCowIo io = h.mio;
    io.pwritev = NULL;
    io.flush = NULL;
    CHECK_OK(addcow_core_open(&io, h.size, NULL, &core));
    CHECK_OK(addcow_core_close(core));
    o = opts_of(ADDCOW_OPEN_RDWR, 0);
    core = SENTINEL;
    CHECK_RC(addcow_core_open(&io, h.size, &o, &core), -EINVAL);
    CHECK(core == NULL);
    io.pwritev = h.mio.pwritev;
    CHECK_OK(addcow_core_open(&io, h.size, &o, &core));
    CHECK_OK(addcow_core_close(core));
    CHECK(atomic_load(&h.meta.n_flush) == 0 && atomic_load(&h.meta.n_pwritev) == 0);
    host_free(&h);
    return T_PASS;
}

int case_core_args(const char *dir)
{
    (void)dir;
    struct host h;
    host_init(&h, 2 * CL, CL, 0);
    AddCowCore *core = SENTINEL;
    AddCowOpenOptions o = opts_of(ADDCOW_OPEN_RDWR, 0);

    /* Open. */
    CHECK_RC(addcow_core_open(NULL, h.size, &o, &core), -EINVAL);
    CHECK(core == NULL);
    CHECK_RC(addcow_core_open(&h.mio, h.size, &o, NULL), -EINVAL);
    core = SENTINEL;
    CHECK_RC(addcow_core_open(&h.mio, ADDCOW_MAX_SIZE + 1, &o, &core), -EFBIG);
    CHECK(core == NULL);
    o.struct_size = 4;
    CHECK_RC(addcow_core_open(&h.mio, h.size, &o, &core), -EINVAL);
    o = opts_of(1u << 20, 0);
    CHECK_RC(addcow_core_open(&h.mio, h.size, &o, &core), -EINVAL);
    CHECK(strstr(addcow_last_error(), "unknown") != NULL);
    const uint32_t host_flags[5] = {ADDCOW_OPEN_WRITETHROUGH, ADDCOW_OPEN_NO_BACKING,
                                    ADDCOW_OPEN_BACKING_ADDCOW, ADDCOW_OPEN_FORCE_SHARE,
                                    ADDCOW_OPEN_CONFINE};
    for (int i = 0; i < 5; i++) {
        o = opts_of(ADDCOW_OPEN_RDWR | host_flags[i], 0);
        core = SENTINEL;
        CHECK_RC(addcow_core_open(&h.mio, h.size, &o, &core), -EINVAL);
        CHECKF(core == NULL && strstr(addcow_last_error(), "the host") != NULL,
               "flag %#x: %s", host_flags[i], addcow_last_error());
    }
    AddCowIo io = h.mio;
    io.get_length = NULL;
    CHECK_RC(addcow_core_open(&io, h.size, NULL, &core), -EINVAL);
    h.meta.data[0] = 'X';
    CHECK_RC(addcow_core_open(&h.mio, h.size, NULL, &core), -EINVAL);
    h.meta.data[0] = 'A';
    h.f.err = ENOSPC;
    h.f.fail_at = atomic_load(&h.f.calls) + 2; /* get_length, then the header's preadv */
    CHECK_RC(addcow_core_open(&h.mio, h.size, NULL, &core), -ENOSPC);
    h.f.fail_at = 0;
    o = opts_of(ADDCOW_OPEN_RDWR, 0);
    CHECK_OK(addcow_core_open(&h.mio, h.size, &o, &core));

    /* NULL handles and pointers. */
    uint64_t n;
    AddCowWriteStep s = new_step();
    CHECK_RC(addcow_core_get_length(NULL), -EINVAL);
    CHECK_RC(addcow_core_get_cluster_size(NULL), -EINVAL);
    CHECK_RC(addcow_core_set_backing_length(NULL, 0), -EINVAL);
    CHECK_RC(addcow_core_set_backing_length(core, -2), -EINVAL);
    CHECK_RC(addcow_core_map(NULL, 0, 1, &n), -EINVAL);
    CHECK_RC(addcow_core_map(core, 0, 1, NULL), -EINVAL);
    CHECK_RC(addcow_core_begin_write(NULL, 0, 1, &s), -EINVAL);
    CHECK_RC(addcow_core_begin_write(core, 0, 1, NULL), -EINVAL);
    CHECK_RC(addcow_core_commit(core, NULL), -EINVAL);
    CHECK_RC(addcow_core_abort(core, NULL), -EINVAL);
    CHECK_RC(addcow_core_generation(NULL), 0);
    AddCowWriteBack *wb;
    uint64_t g;
    CHECK_RC(addcow_core_writeback_begin(NULL, &wb, &g), -EINVAL);
    CHECK_RC(addcow_core_writeback_begin(core, NULL, &g), -EINVAL);
    CHECK_RC(addcow_core_writeback_begin(core, &wb, NULL), -EINVAL);
    CHECK_RC(addcow_writeback_pages(NULL), -EINVAL);
    CHECK_RC(addcow_core_writeback_write(core, NULL), -EINVAL);
    CHECK_RC(addcow_core_writeback_end(core, NULL, 1), -EINVAL);

    /* The step struct: too small is refused untouched; a newer, larger one is filled and
     * zeroed past ours, its struct_size kept. */
    s.struct_size = sizeof s - 1;
    CHECK_RC(addcow_core_begin_write(core, 0, 1, &s), -EINVAL);
    CHECK(s.kind == 0xA5A5A5A5u && s.struct_size == sizeof s - 1);
    struct {
        AddCowWriteStep step;
        uint64_t newer[3];
    } big;
    memset(&big, 0xA5, sizeof big);
    big.step.struct_size = sizeof big;
    CHECK_OK(addcow_core_begin_write(core, CL, 5, &big.step));
    CHECK(big.step.struct_size == sizeof big && big.step.kind == ADDCOW_STEP_ALLOCATE);
    CHECK(big.step.len == 5 && big.step.cluster_start == CL && big.step.head_zero == 0);
    CHECK(all_zero((const uint8_t *)big.newer, sizeof big.newer));
    CHECK_OK(addcow_core_abort(core, big.step.txn));

    /* Out of range; 0 bytes. The step is zeroed. */
    s = new_step();
    CHECK_RC(addcow_core_begin_write(core, h.size, 1, &s), -EINVAL);
    CHECK(s.kind == 0 && s.txn == NULL && s.struct_size == sizeof s);
    CHECK_RC(addcow_core_begin_write(core, h.size - 1, 2, &s), -EINVAL);
    CHECK_RC(addcow_core_begin_write(core, 1, UINT64_MAX, &s), -EINVAL);
    CHECK_RC(addcow_core_begin_write(core, 0, 0, &s), -EINVAL);

    /* A transaction of another core is refused and stays open; close refuses a core with an
     * open transaction. */
    AddCowCore *second;
    CHECK_OK(addcow_core_open(&h.mio, h.size, &o, &second));
    s = new_step();
    CHECK_OK(addcow_core_begin_write(core, 0, 1, &s));
    CHECK(s.kind == ADDCOW_STEP_ALLOCATE);
    CHECK_RC(addcow_core_commit(second, s.txn), -EINVAL);
    CHECK_RC(addcow_core_abort(second, s.txn), -EINVAL);
    CHECK_RC(addcow_core_commit(NULL, s.txn), -EINVAL);
    CHECK(strstr(addcow_last_error(), "core") != NULL);
    CHECK_RC(addcow_core_close(core), -EBUSY);
    CHECK(strstr(addcow_last_error(), "still open") != NULL);
    TRY(map_is(core, 0, 1, ADDCOW_MAP_ZERO, 1)); /* still usable */
    CHECK_OK(addcow_core_commit(core, s.txn));
    TRY(map_is(core, 0, 1, ADDCOW_MAP_DATA, 1));
    CHECK_OK(addcow_core_writeback_begin(second, &wb, &g));
    CHECK_RC(addcow_core_writeback_write(core, wb), -EINVAL);
    CHECK_RC(addcow_core_writeback_end(core, wb, 1), -EINVAL);
    CHECK_OK(addcow_core_writeback_end(second, wb, 1));
    CHECK_OK(addcow_core_close(second));
    CHECK_OK(addcow_core_close(core));
    CHECK_OK(addcow_core_close(NULL));
    host_free(&h);
    return T_PASS;
}

/* ------------------------------------------------------------------ re-entrancy */

/* The .add-cow file's callbacks call into the core they serve, as a coroutine that yields in
 * its I/O lets others do. A lock held across a callback would deadlock here; the alarm turns a
 * hang into a failure. */
static struct {
    AddCowCore *core;
    int depth;
    int nested_maps, nested_writes;
    int errors;
    AddCowIo inner;
} re;

/* Maps cluster 3 of `page` (its load, if any, calls back again, one level down) and writes a
 * fresh cluster of it. */
static void nested_calls(uint64_t page)
{
    uint64_t n;
    uint64_t off = (page % 4) * PAGE_CLUSTERS * CL + 3 * CL;
    if (addcow_core_map(re.core, off, CL, &n) <= 0)
        re.errors++;
    re.nested_maps++;
    AddCowWriteStep s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    if (addcow_core_begin_write(re.core, off + (uint64_t)re.nested_maps * CL, 1, &s) != 0)
        re.errors++;
    else if (s.kind == ADDCOW_STEP_ALLOCATE) {
        if (addcow_core_commit(re.core, s.txn) != 0)
            re.errors++;
        re.nested_writes++;
    }
    (void)addcow_core_generation(re.core);
}

static int re_preadv(void *opaque, uint64_t offset, const struct iovec *iov, int iovcnt)
{
    if (re.core && re.depth == 0) {
        re.depth++;
        nested_calls((offset - HDR) / 4096 + 1);
        re.depth--;
    }
    return re.inner.preadv(opaque, offset, iov, iovcnt);
}

static int re_pwritev(void *opaque, uint64_t offset, const struct iovec *iov, int iovcnt)
{
    if (re.core && re.depth == 0) {
        re.depth++;
        nested_calls((offset - HDR) / 4096 + 2);
        re.depth--;
    }
    return re.inner.pwritev(opaque, offset, iov, iovcnt);
}

int case_core_reentrant(const char *dir)
{
    (void)dir;
    struct host h;
    host_init(&h, 4 * PAGE_CLUSTERS * CL, 0, 1);
    memset(&re, 0, sizeof re);
    re.inner = h.mio;
    AddCowIo io = h.mio;
    io.preadv = re_preadv;
    io.pwritev = re_pwritev;
    alarm(10);
    AddCowOpenOptions o = opts_of(ADDCOW_OPEN_RDWR, 0);
    CHECK_OK(addcow_core_open(&io, h.size, &o, &re.core));
    /* Page 0's load maps and writes in page 1 from inside the callback. */
    TRY(map_is(re.core, 0, CL, ADDCOW_MAP_ZERO, CL));
    CHECK(re.nested_maps == 1 && re.nested_writes == 1 && re.errors == 0);
    TRY(map_is(re.core, PAGE_CLUSTERS * CL + 4 * CL, CL, ADDCOW_MAP_DATA, CL));
    /* A write that loads page 2 runs a nested write in page 3, and commits after it. */
    AddCowWriteStep s = new_step();
    CHECK_OK(addcow_core_begin_write(re.core, 2 * PAGE_CLUSTERS * CL, 1, &s));
    CHECK(s.kind == ADDCOW_STEP_ALLOCATE);
    CHECK_OK(addcow_core_commit(re.core, s.txn));
    CHECK(re.nested_writes == 2 && re.errors == 0);
    /* The write-back's pwritev commits a write into a page being written back: the write-back
     * still ends, and that page stays dirty for the next one. */
    AddCowWriteBack *wb;
    uint64_t g;
    CHECK_OK(addcow_core_writeback_begin(re.core, &wb, &g));
    CHECK_RC(addcow_writeback_pages(wb), 3);
    int before = re.nested_writes;
    CHECK_OK(addcow_core_writeback_write(re.core, wb));
    CHECK(re.nested_writes > before && re.errors == 0);
    CHECK_OK(h.mio.flush(h.mio.opaque));
    CHECK_OK(addcow_core_writeback_end(re.core, wb, 1));
    CHECK_OK(addcow_core_writeback_begin(re.core, &wb, &g));
    CHECK(addcow_writeback_pages(wb) >= 1);
    CHECK_OK(addcow_core_writeback_end(re.core, wb, 0));
    alarm(0);
    AddCowCore *core = re.core;
    re.core = NULL;
    CHECK_OK(addcow_core_close(core));
    host_free(&h);
    return T_PASS;
}

/* ------------------------------------------------------------------ threads */

/* Writers on several threads share clusters (each its own sectors), told busy and retrying
 * when the generation moves: every sector ends with its writer's bytes, the rest with the
 * backing file's. */
#define NWRITERS 4

struct writer {
    struct host *h;
    int id;
    int failed;
};

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    struct host *h = w->h;
    uint8_t sector[512];
    for (uint64_t c = 0; c < 8; c++) {
        uint64_t off = c * CL + (uint64_t)(w->id * 3 + (int)c) % 128 * SEC;
        fill_pat(sector, sizeof sector, (uint32_t)(10 + w->id), off);
        uint64_t pos = 0;
        while (pos < SEC) {
            AddCowWriteStep s;
            memset(&s, 0, sizeof s);
            s.struct_size = sizeof s;
            if (addcow_core_begin_write(h->core, off + pos, SEC - pos, &s) != 0) {
                w->failed = 1;
                return NULL;
            }
            if (s.kind == ADDCOW_STEP_BUSY) {
                while (addcow_core_generation(h->core) == s.generation)
                    sched_yield();
                continue;
            }
            if (s.kind == ADDCOW_STEP_IN_PLACE) {
                memcpy(h->image + off + pos, sector + pos, s.len);
            } else {
                /* Only this thread writes these clusters until it commits. */
                memcpy(h->image + s.cluster_start, h->backing + s.cluster_start,
                       s.head_backing);
                memcpy(h->image + off + pos, sector + pos, s.len);
                uint64_t end = off + pos + s.len;
                memcpy(h->image + end, h->backing + end, s.tail_backing);
                if (addcow_core_commit(h->core, s.txn) != 0) {
                    w->failed = 1;
                    return NULL;
                }
            }
            pos += s.len;
        }
    }
    return NULL;
}

int case_core_threads(const char *dir)
{
    (void)dir;
    struct host h;
    host_init(&h, 8 * CL, 8 * CL, 0);
    TRY(host_open(&h, 0));
    uint8_t *model = xmalloc(h.size);
    memcpy(model, h.backing, h.size);
    pthread_t th[NWRITERS];
    struct writer w[NWRITERS];
    for (int i = 0; i < NWRITERS; i++) {
        w[i] = (struct writer){&h, i, 0};
        CHECK(pthread_create(&th[i], NULL, writer_main, &w[i]) == 0);
    }
    for (int i = 0; i < NWRITERS; i++) {
        pthread_join(th[i], NULL);
        CHECKF(!w[i].failed, "writer %d: %s", i, addcow_last_error());
        for (uint64_t c = 0; c < 8; c++) {
            uint64_t off = c * CL + (uint64_t)(i * 3 + (int)c) % 128 * SEC;
            fill_pat(model + off, SEC, (uint32_t)(10 + i), off);
        }
    }
    TRY(map_is(h.core, 0, h.size, ADDCOW_MAP_DATA, h.size));
    TRY(read_model(&h, model, "after concurrent writers"));
    CHECK_OK(addcow_core_close(h.core));
    free(model);
    host_free(&h);
    return T_PASS;
}
