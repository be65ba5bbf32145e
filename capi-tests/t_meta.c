/*
 * The mapping core's metadata calls beyond reads and writes, as a QEMU driver uses them:
 * zeroing whole clusters (addcow_core_begin_zero), the "all allocated" state and layout 2's
 * bit (addcow_core_is_fully_allocated, addcow_core_set_all_allocated), changing the backing
 * file the header names (addcow_core_set_backing_file, addcow_set_backing_file) with a fault
 * at every host call, reloading the cached metadata (addcow_core_reload), and creating the
 * `.add-cow` file through host I/O (addcow_create_io). The `.add-cow` file lives in memio
 * (fault injection, a durable copy).
 */
#include "memio.h"

#include <unistd.h>

static AddCowOpenOptions rdwr(void)
{
    AddCowOpenOptions o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.flags = ADDCOW_OPEN_RDWR;
    return o;
}

static AddCowWriteStep step0(void)
{
    AddCowWriteStep s;
    memset(&s, 0xA5, sizeof s);
    s.struct_size = sizeof s;
    return s;
}

static int map_is(AddCowCore *core, uint64_t off, uint64_t bytes, int kind, uint64_t len)
{
    uint64_t n = 12345;
    int got = addcow_core_map(core, off, bytes, &n);
    CHECKF(got == kind && n == len, "map(%llu, %llu) = %d, %llu; want %d, %llu (%s)",
           (unsigned long long)off, (unsigned long long)bytes, got, (unsigned long long)n,
           kind, (unsigned long long)len, got < 0 ? addcow_last_error() : "");
    return T_PASS;
}

/* The flush sequence (the image file being memory, there is nothing to flush of it). */
static int flush_core(AddCowCore *core, AddCowIo *mio)
{
    AddCowWriteBack *wb = NULL;
    uint64_t g;
    CHECK_OK(addcow_core_writeback_begin(core, &wb, &g));
    CHECK_OK(addcow_core_writeback_write(core, wb));
    CHECK_OK(mio->flush(mio->opaque));
    CHECK_OK(addcow_core_writeback_end(core, wb, 1));
    return T_PASS;
}

/* A layout-2 `.add-cow` file made by addcow_create in `dir`, loaded into `m`. */
static int load_layout2(memfile *m, const char *dir, const char *backing, uint64_t size,
                        uint32_t cluster_size)
{
    char meta[PATH_MAX];
    pj(meta, dir, "l2.add-cow");
    AddCowCreateOptions o = create_opts("l2.raw", backing, size);
    o.layout = 2;
    o.cluster_size = cluster_size;
    CHECK_OK(addcow_create(meta, &o));
    size_t len;
    uint8_t *bytes = read_whole(meta, &len);
    CHECK(bytes != NULL);
    mf_set(m, bytes, len);
    free(bytes);
    return T_PASS;
}

/* Whether the header of `m` (as it is now, or as durable) names `image` and `backing` ("" for
 * none) in `format`: 1 or 0, -1 when it does not read. */
static int header_names(memfile *m, int durable, const char *image, const char *backing,
                        const char *format)
{
    memfile copy;
    mf_init(&copy, "copy", NULL);
    mf_set(&copy, durable ? m->dur : m->data, durable ? m->dur_len : m->len);
    AddCowIo io = mf_io(&copy, 0);
    AddCowHeader *h = NULL;
    int rc = addcow_header_read_io(&io, &h);
    mf_free(&copy);
    if (rc != 0)
        return -1;
    const char *b = addcow_header_backing_file(h);
    const char *f = addcow_header_backing_format(h);
    int same = strcmp(addcow_header_image_file(h), image) == 0 &&
               strcmp(b ? b : "", backing) == 0 && strcmp(f ? f : "", format) == 0;
    addcow_header_free(h);
    return same;
}

/* The header of `m` names `backing` in `format`. */
static int names(memfile *m, int durable, const char *image, const char *backing,
                 const char *format)
{
    int got = header_names(m, durable, image, backing, format);
    CHECKF(got == 1, "the %s header %s '%s' (%s)", durable ? "durable" : "current",
           got < 0 ? "does not read; want" : "does not name", backing, format);
    return T_PASS;
}

/* ------------------------------------------------------------------ zeroing */

int case_core_begin_zero(const char *dir)
{
    (void)dir;
    struct faults f;
    memset(&f, 0, sizeof f);
    memfile m;
    mf_init(&m, "meta", &f);
    const uint64_t size = 4 * CL + 1000;
    mf_make_meta(&m, "image.raw", "base.raw", size);
    AddCowIo mio = mf_io(&m, 0);
    AddCowOpenOptions o = rdwr();
    AddCowCore *core;
    CHECK_OK(addcow_core_open(&mio, size, &o, &core));
    CHECK_OK(addcow_core_set_backing_length(core, (int64_t)size));

    /* Cluster 1 allocated by a write first. */
    AddCowWriteStep s = step0();
    CHECK_OK(addcow_core_begin_write(core, CL + 10, 10, &s));
    CHECK(s.kind == ADDCOW_STEP_ALLOCATE && s.head_backing == 10);
    CHECK_OK(addcow_core_commit(core, s.txn));

    /* Clusters 0..3: a transaction over cluster 0 without head or tail, then in place over 1,
     * then one over 2..3. */
    s = step0();
    CHECK_OK(addcow_core_begin_zero(core, 0, 4 * CL, &s));
    CHECKF(s.kind == ADDCOW_STEP_ALLOCATE && s.len == CL && s.cluster_start == 0 &&
               s.cluster_end == CL && s.head_backing == 0 && s.head_zero == 0 &&
               s.tail_backing == 0 && s.tail_zero == 0 && s.txn != NULL,
           "zero step kind %u len %llu", s.kind, (unsigned long long)s.len);
    AddCowTxn *first = s.txn;
    /* A write into a cluster being zeroed is busy, as one into a cluster being written. */
    AddCowWriteStep w = step0();
    CHECK_OK(addcow_core_begin_write(core, 100, 1, &w));
    CHECK(w.kind == ADDCOW_STEP_BUSY && w.generation == addcow_core_generation(core));
    CHECK_OK(addcow_core_commit(core, first)); /* (the host zeroed or punched cluster 0) */
    s = step0();
    CHECK_OK(addcow_core_begin_zero(core, CL, 3 * CL, &s));
    CHECK(s.kind == ADDCOW_STEP_IN_PLACE && s.len == CL && s.txn == NULL);
    s = step0();
    CHECK_OK(addcow_core_begin_zero(core, 2 * CL, 2 * CL, &s));
    CHECK(s.kind == ADDCOW_STEP_ALLOCATE && s.len == 2 * CL && s.cluster_end == 4 * CL);
    CHECK_OK(addcow_core_abort(core, s.txn));
    /* The partial last cluster is whole up to the image end. */
    s = step0();
    CHECK_OK(addcow_core_begin_zero(core, 4 * CL, 1000, &s));
    CHECK(s.kind == ADDCOW_STEP_ALLOCATE && s.cluster_end == size);
    CHECK_OK(addcow_core_commit(core, s.txn));
    TRY(map_is(core, 0, size, ADDCOW_MAP_DATA, 2 * CL));
    TRY(map_is(core, 2 * CL, size, ADDCOW_MAP_BACKING, 2 * CL));
    TRY(map_is(core, 4 * CL, size, ADDCOW_MAP_DATA, 1000));

    /* Refusals: not whole clusters, past the end, NULL; the step is zeroed. */
    s = step0();
    CHECK_RC(addcow_core_begin_zero(core, 1, CL, &s), -EINVAL);
    CHECK(strstr(addcow_last_error(), "whole clusters") != NULL);
    CHECK(s.kind == 0 && s.len == 0 && s.txn == NULL && s.struct_size == sizeof s);
    CHECK_RC(addcow_core_begin_zero(core, 0, 100, &s), -EINVAL);
    CHECK_RC(addcow_core_begin_zero(core, 4 * CL, 2 * CL, &s), -EINVAL);
    CHECK_RC(addcow_core_begin_zero(core, 0, CL, NULL), -EINVAL);
    CHECK_RC(addcow_core_begin_zero(NULL, 0, CL, &s), -EINVAL);
    TRY(flush_core(core, &mio));
    CHECK(m.dur[HDR] == 0x13); /* clusters 0, 1 and 4 */
    CHECK_OK(addcow_core_close(core));
    /* Read-only: EPERM. */
    CHECK_OK(addcow_core_open(&mio, size, NULL, &core));
    CHECK_RC(addcow_core_begin_zero(core, 2 * CL, CL, &s), -EPERM);
    CHECK_OK(addcow_core_close(core));
    mf_free(&m);
    return T_PASS;
}

/* ------------------------------------------------------------------ all allocated */

int case_core_all_allocated(const char *dir)
{
    struct faults f;
    memset(&f, 0, sizeof f);
    memfile m;
    mf_init(&m, "meta", &f);
    const uint64_t cs = 4096, size = 5 * cs + 100;
    TRY(load_layout2(&m, dir, "base.raw", size, (uint32_t)cs));
    AddCowIo mio = mf_io(&m, 0);
    AddCowOpenOptions o = rdwr();
    AddCowCore *core;
    CHECK_OK(addcow_core_open(&mio, size, &o, &core));
    CHECK_OK(addcow_core_set_backing_length(core, (int64_t)size));
    CHECK_RC(addcow_core_is_fully_allocated(core), 0);
    /* Not every cluster: clearing a clear bit writes nothing. */
    long writes = atomic_load(&m.n_pwritev);
    CHECK_OK(addcow_core_set_all_allocated(core, 0));
    CHECK(atomic_load(&m.n_pwritev) == writes);
    for (uint64_t c = 0; c * cs < size; c++) {
        AddCowWriteStep s = step0();
        CHECK_OK(addcow_core_begin_zero(core, c * cs, c * cs + cs > size ? size - c * cs : cs,
                                        &s));
        CHECK(s.kind == ADDCOW_STEP_ALLOCATE);
        CHECK_OK(addcow_core_commit(core, s.txn));
        CHECK_RC(addcow_core_is_fully_allocated(core), c == 5);
    }
    /* The flush sequence, then the bit: only the feature field, then a flush. */
    int full = addcow_core_is_fully_allocated(core);
    CHECK(full == 1);
    TRY(flush_core(core, &mio));
    writes = atomic_load(&m.n_pwritev);
    long flushes = atomic_load(&m.n_flush);
    CHECK_OK(addcow_core_set_all_allocated(core, full));
    CHECK(atomic_load(&m.n_pwritev) == writes + 1 && atomic_load(&m.n_flush) == flushes + 1);
    CHECK(m.dur[32] == ADDCOW_COMPAT_ALL_ALLOCATED);
    CHECK_OK(addcow_core_set_all_allocated(core, 1)); /* already so: nothing written */
    CHECK(atomic_load(&m.n_pwritev) == writes + 1);
    CHECK_OK(addcow_core_close(core));
    /* A fresh core answers from the bit, even over a bitmap that says nothing. */
    memset(m.data + cs, 0, m.len - cs);
    CHECK_OK(addcow_core_open(&mio, size, &o, &core));
    CHECK_RC(addcow_core_is_fully_allocated(core), 1);
    TRY(map_is(core, 0, size, ADDCOW_MAP_DATA, size));
    /* A failed write of the field keeps the bit in memory, and the next call rewrites it. */
    f.err = EIO;
    f.fail_at = atomic_load(&f.calls) + 1;
    CHECK_RC(addcow_core_set_all_allocated(core, 0), -EIO);
    f.fail_at = 0;
    TRY(map_is(core, 0, size, ADDCOW_MAP_DATA, size));
    CHECK_OK(addcow_core_set_all_allocated(core, 1));
    CHECK(m.dur[32] == ADDCOW_COMPAT_ALL_ALLOCATED);
    CHECK_OK(addcow_core_close(core));
    /* Without a flush callback the header cannot be ordered: EBADF, the bit stays. */
    AddCowIo noflush = mio;
    noflush.flush = NULL;
    m.data[32] = 0;
    mf_commit(&m);
    CHECK_OK(addcow_core_open(&noflush, size, &o, &core));
    CHECK_RC(addcow_core_is_fully_allocated(core), 0);
    CHECK_RC(addcow_core_set_all_allocated(core, 1), -EBADF);
    CHECK_OK(addcow_core_close(core));
    /* Read-only (the failed flush left the bit written, not durable): asking for what the
     * header says writes nothing; the other value is EPERM. */
    CHECK(m.data[32] == ADDCOW_COMPAT_ALL_ALLOCATED);
    CHECK_OK(addcow_core_open(&mio, size, NULL, &core));
    CHECK_OK(addcow_core_set_all_allocated(core, 1));
    CHECK_RC(addcow_core_set_all_allocated(core, 0), -EPERM);
    CHECK_OK(addcow_core_close(core));
    CHECK_RC(addcow_core_is_fully_allocated(NULL), -EINVAL);
    CHECK_RC(addcow_core_set_all_allocated(NULL, 1), -EINVAL);
    mf_free(&m);

    /* Layout 1 has no such bit: nothing is written. */
    mf_init(&m, "meta1", NULL);
    mf_make_meta(&m, "image.raw", NULL, CL);
    mio = mf_io(&m, 0);
    CHECK_OK(addcow_core_open(&mio, CL, &o, &core));
    AddCowWriteStep s = step0();
    CHECK_OK(addcow_core_begin_zero(core, 0, CL, &s));
    CHECK_OK(addcow_core_commit(core, s.txn));
    CHECK_RC(addcow_core_is_fully_allocated(core), 1);
    writes = atomic_load(&m.n_pwritev);
    CHECK_OK(addcow_core_set_all_allocated(core, 1));
    CHECK(atomic_load(&m.n_pwritev) == writes);
    TRY(flush_core(core, &mio));
    CHECK_OK(addcow_core_close(core));
    mf_free(&m);
    return T_PASS;
}

/* ------------------------------------------------------------------ backing file name */

/* One rename on a fresh copy of `start` with call `fail` (1-based; 0: none) failing: the
 * error comes back, the file (as it is, and as durable) names the old or the new backing
 * file, the core the old one, and a retry completes. Returns 1 in *done when nothing
 * failed. */
static int rename_with_fault(const uint8_t *start, size_t len, uint64_t size, long fail,
                             const char *image, const char *old, const char *old_fmt,
                             const char *name, const char *fmt, const char *new_fmt, int *done)
{
    struct faults f;
    memset(&f, 0, sizeof f);
    memfile m;
    mf_init(&m, "meta", &f);
    mf_set(&m, start, len);
    AddCowIo mio = mf_io(&m, 0);
    AddCowOpenOptions o = rdwr();
    AddCowCore *core;
    CHECK_OK(addcow_core_open(&mio, size, &o, &core));
    f.err = EIO;
    f.fail_at = fail ? atomic_load(&f.calls) + fail : 0;
    int rc = addcow_core_set_backing_file(core, name, fmt);
    *done = atomic_load(&f.fired) == 0;
    if (*done) {
        CHECK_OK(rc);
    } else {
        CHECK_RC(rc, -EIO);
        f.fail_at = 0;
        for (int durable = 0; durable < 2; durable++)
            CHECKF(header_names(&m, durable, image, old, old_fmt) == 1 ||
                       header_names(&m, durable, image, name ? name : "", new_fmt) == 1,
                   "call %ld failed: the %s header is neither the old nor the new one", fail,
                   durable ? "durable" : "current");
        CHECK_OK(addcow_core_set_backing_file(core, name, fmt));
    }
    TRY(names(&m, 1, image, name ? name : "", new_fmt));
    CHECK_OK(addcow_core_close(core));
    mf_free(&m);
    return T_PASS;
}

static int renames(const uint8_t *start, size_t len, uint64_t size, const char *image,
                   const char *old, const char *old_fmt, const char *name, const char *fmt,
                   const char *new_fmt)
{
    int done = 0;
    long fail = 1;
    for (; !done; fail++)
        TRY(rename_with_fault(start, len, size, fail, image, old, old_fmt, name, fmt, new_fmt,
                              &done));
    CHECKF(fail > 3, "only %ld host calls: a write and a flush at least", fail - 2);
    return T_PASS;
}

int case_core_set_backing_file(const char *dir)
{
    memfile m;
    mf_init(&m, "meta", NULL);
    /* Layout 1: any name up to 1023 bytes; the format is only checked. */
    mf_make_meta(&m, "image.raw", "base-with-a-long-name.raw", 3 * CL);
    TRY(renames(m.data, m.len, 3 * CL, "image.raw", "base-with-a-long-name.raw", "", "b.raw",
                "add-cow", ""));
    TRY(renames(m.data, m.len, 3 * CL, "image.raw", "base-with-a-long-name.raw", "", NULL,
                NULL, ""));
    mf_free(&m);
    /* Layout 2: name and format; removing; adding. */
    mf_init(&m, "meta", NULL);
    TRY(load_layout2(&m, dir, "base.raw", 3 * CL, 4096));
    TRY(renames(m.data, m.len, 3 * CL, "l2.raw", "base.raw", "raw", "next.add-cow", "add-cow",
                "add-cow"));
    TRY(renames(m.data, m.len, 3 * CL, "l2.raw", "base.raw", "raw", "", NULL, ""));
    mf_free(&m);
    mf_init(&m, "meta", NULL);
    TRY(load_layout2(&m, dir, NULL, 3 * CL, 4096));
    TRY(renames(m.data, m.len, 3 * CL, "l2.raw", "", "", "base.raw", NULL, "raw"));

    /* Refusals, and what a core that changed the name reads: the bitmap stays. */
    AddCowIo mio = mf_io(&m, 0);
    AddCowOpenOptions o = rdwr();
    AddCowCore *core;
    CHECK_OK(addcow_core_open(&mio, 3 * CL, &o, &core));
    AddCowWriteStep s = step0();
    CHECK_OK(addcow_core_begin_write(core, CL, 1, &s));
    CHECK_OK(addcow_core_commit(core, s.txn));
    TRY(flush_core(core, &mio));
    CHECK_RC(addcow_core_set_backing_file(core, "l2.raw", NULL), -EINVAL);
    CHECK(strstr(addcow_last_error(), "same name") != NULL);
    CHECK_RC(addcow_core_set_backing_file(core, "b.qcow2", "qcow2"), -EINVAL);
    CHECK(strstr(addcow_last_error(), "qcow2") != NULL);
    char *huge = xmalloc(4096);
    memset(huge, 'h', 4095);
    huge[4095] = 0;
    CHECK_RC(addcow_core_set_backing_file(core, huge, NULL), -EINVAL);
    free(huge);
    CHECK_RC(addcow_core_set_backing_file(NULL, "x", NULL), -EINVAL);
    CHECK_OK(addcow_core_set_backing_file(core, "other.raw", "raw"));
    TRY(names(&m, 1, "l2.raw", "other.raw", "raw"));
    CHECK_OK(addcow_core_close(core));
    CHECK_OK(addcow_core_open(&mio, 3 * CL, NULL, &core));
    CHECK_OK(addcow_core_set_backing_length(core, 3 * CL));
    TRY(map_is(core, 0, 3 * CL, ADDCOW_MAP_BACKING, CL));
    TRY(map_is(core, CL, 3 * CL, ADDCOW_MAP_DATA, 4096)); /* 4 KiB clusters */
    CHECK_RC(addcow_core_set_backing_file(core, "x", NULL), -EPERM);
    CHECK_OK(addcow_core_close(core));
    mf_free(&m);
    return T_PASS;
}

/* The same through an open image's handle, on files: the next open follows the new name. */
int case_set_backing_file(const char *dir)
{
    char meta[PATH_MAX], image[PATH_MAX], base[PATH_MAX], other[PATH_MAX];
    pj(meta, dir, "t.add-cow");
    pj(image, dir, "t.raw");
    pj(base, dir, "base.raw");
    pj(other, dir, "other.raw");
    CHECK(write_pat_file(base, 2 * CL, 1) == 0);
    CHECK(write_pat_file(other, 2 * CL, 2) == 0);
    CHECK_OK(create_img(meta, "t.raw", "base.raw", 2 * CL));
    AddCowImage *img;
    CHECK_OK(open_img(meta, ADDCOW_OPEN_RDWR, &img));
    uint8_t want[512];
    fill_pat(want, sizeof want, 1, 0);
    TRY(read_expect(img, 0, want, sizeof want, "before"));
    CHECK_OK(addcow_set_backing_file(img, "other.raw", "raw"));
    TRY(read_expect(img, 0, want, sizeof want, "the open image keeps its backing file"));
    CHECK_RC(addcow_set_backing_file(img, "x", "vmdk"), -EINVAL);
    CHECK_RC(addcow_set_backing_file(NULL, "x", NULL), -EINVAL);
    CHECK_OK(addcow_close(img));
    CHECK_OK(open_img(meta, 0, &img));
    fill_pat(want, sizeof want, 2, 0);
    TRY(read_expect(img, 0, want, sizeof want, "after reopening"));
    CHECK_RC(addcow_set_backing_file(img, "base.raw", NULL), -EPERM);
    CHECK_OK(addcow_close(img));
    CHECK_OK(open_img(meta, ADDCOW_OPEN_RDWR, &img));
    CHECK_OK(addcow_set_backing_file(img, NULL, NULL));
    CHECK_OK(addcow_close(img));
    CHECK_OK(open_img(meta, 0, &img));
    CHECK_RC(addcow_get_backing_length(img), 0);
    memset(want, 0, sizeof want);
    TRY(read_expect(img, 0, want, sizeof want, "without a backing file"));
    CHECK_OK(addcow_close(img));
    return T_PASS;
}

/* ------------------------------------------------------------------ reload */

int case_core_reload(const char *dir)
{
    (void)dir;
    memfile m;
    mf_init(&m, "meta", NULL);
    const uint64_t size = 4 * CL;
    mf_make_meta(&m, "image.raw", "base.raw", size);
    AddCowIo mio = mf_io(&m, 0);
    AddCowOpenOptions o = rdwr();
    AddCowCore *core, *other;
    CHECK_OK(addcow_core_open(&mio, size, &o, &core));
    CHECK_OK(addcow_core_set_backing_length(core, (int64_t)size));
    TRY(map_is(core, 0, size, ADDCOW_MAP_BACKING, size)); /* caches the page */

    /* Another core (a migration source) allocates cluster 2 and renames the backing file. */
    CHECK_OK(addcow_core_open(&mio, size, &o, &other));
    AddCowWriteStep s = step0();
    CHECK_OK(addcow_core_begin_write(other, 2 * CL, 1, &s));
    CHECK_OK(addcow_core_commit(other, s.txn));
    TRY(flush_core(other, &mio));
    CHECK_OK(addcow_core_set_backing_file(other, "moved.raw", NULL));
    CHECK_OK(addcow_core_close(other));
    TRY(map_is(core, 0, size, ADDCOW_MAP_BACKING, size)); /* stale until reloaded */
    CHECK_OK(addcow_core_reload(core));
    TRY(map_is(core, 0, size, ADDCOW_MAP_BACKING, 2 * CL));
    TRY(map_is(core, 2 * CL, size, ADDCOW_MAP_DATA, CL));

    /* Busy while a transaction is open, or pages are dirty, and nothing changes. */
    s = step0();
    CHECK_OK(addcow_core_begin_write(core, 0, 1, &s));
    CHECK_RC(addcow_core_reload(core), -EBUSY);
    CHECK_OK(addcow_core_commit(core, s.txn));
    CHECK_RC(addcow_core_reload(core), -EBUSY);
    CHECK(strstr(addcow_last_error(), "flush") != NULL);
    AddCowWriteBack *wb;
    uint64_t g;
    CHECK_OK(addcow_core_writeback_begin(core, &wb, &g));
    CHECK_RC(addcow_core_reload(core), -EBUSY);
    CHECK_OK(addcow_core_writeback_write(core, wb));
    CHECK_OK(mio.flush(mio.opaque));
    CHECK_OK(addcow_core_writeback_end(core, wb, 1));
    CHECK_OK(addcow_core_reload(core));
    TRY(map_is(core, 0, size, ADDCOW_MAP_DATA, CL));

    /* A header that no longer parses: the error, and the core keeps its state. */
    m.data[0] = 'X';
    CHECK_RC(addcow_core_reload(core), -EINVAL);
    TRY(map_is(core, 0, size, ADDCOW_MAP_DATA, CL));
    m.data[0] = 'A';
    CHECK_RC(addcow_core_reload(NULL), -EINVAL);
    CHECK_OK(addcow_core_close(core));
    mf_free(&m);
    return T_PASS;
}

/* ------------------------------------------------------------------ create through host I/O */

int case_create_io(const char *dir)
{
    (void)dir;
    struct faults f;
    memset(&f, 0, sizeof f);
    memfile m;
    mf_init(&m, "meta", &f);
    /* Over a longer file full of garbage: the bitmap must read zeros afterwards. */
    mf_set_pat(&m, 300000, 5);
    for (int with_truncate = 1; with_truncate >= 0; with_truncate--) {
        AddCowIo mio = mf_io(&m, with_truncate);
        AddCowCreateOptions o = create_opts("disk.raw", "base.raw", 5 * CL + 10);
        o.layout = 2;
        o.cluster_size = 4096;
        CHECK_OK(addcow_create_io(&mio, &o));
        TRY(names(&m, 1, "disk.raw", "base.raw", "raw"));
        /* header_size 4096, 81 clusters of bits rounded to a cluster */
        if (with_truncate)
            CHECK(m.dur_len == 8192);
        AddCowCore *core;
        AddCowOpenOptions ro;
        memset(&ro, 0, sizeof ro);
        ro.struct_size = sizeof ro;
        CHECK_OK(addcow_core_open(&mio, 5 * CL + 10, &ro, &core));
        CHECK_OK(addcow_core_set_backing_length(core, 5 * CL + 10));
        TRY(map_is(core, 0, 5 * CL + 10, ADDCOW_MAP_BACKING, 5 * CL + 10));
        CHECK_OK(addcow_core_close(core));
        mf_set_pat(&m, 300000, 6);
    }
    /* Layout 1 at size 0, without a backing file. */
    AddCowIo mio = mf_io(&m, 1);
    AddCowCreateOptions o = create_opts("disk.raw", NULL, 0);
    CHECK_OK(addcow_create_io(&mio, &o));
    CHECK(m.dur_len == HDR);
    TRY(names(&m, 1, "disk.raw", "", ""));
    /* A failing host call is the error. */
    f.err = ENOSPC;
    f.fail_at = atomic_load(&f.calls) + 3;
    CHECK_RC(addcow_create_io(&mio, &o), -ENOSPC);
    f.fail_at = 0;
    /* Refusals. */
    o.flags = ADDCOW_CREATE_CONFINE;
    CHECK_RC(addcow_create_io(&mio, &o), -EINVAL);
    o.flags = 0;
    o.layout = 3;
    CHECK_RC(addcow_create_io(&mio, &o), -ENOTSUP);
    o.layout = 1;
    o.size = ADDCOW_MAX_SIZE + 1;
    CHECK_RC(addcow_create_io(&mio, &o), -EFBIG);
    o.size = CL;
    o.image_file = NULL;
    CHECK_RC(addcow_create_io(&mio, &o), -EINVAL);
    o.image_file = "disk.raw";
    CHECK_RC(addcow_create_io(&mio, NULL), -EINVAL);
    CHECK_RC(addcow_create_io(NULL, &o), -EINVAL);
    AddCowIo noflush = mio;
    noflush.flush = NULL;
    CHECK_RC(addcow_create_io(&noflush, &o), -EINVAL);
    CHECK(strstr(addcow_last_error(), "flush") != NULL);
    mf_free(&m);
    return T_PASS;
}
