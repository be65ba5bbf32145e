/*
 * The host-I/O path (addcow_open_io, addcow_header_read_io) over in-memory files, with fault
 * injection and crash simulation.
 */
#include "memio.h"

#include <time.h>

static int dummy_handle;
#define SENTINEL ((void *)&dummy_handle)

struct env {
    struct faults f;
    memfile meta, image, backing;
    AddCowIo mio, iio, bio;
};

static void env_init(struct env *e, int image_truncate, int meta_truncate)
{
    memset(&e->f, 0, sizeof e->f);
    mf_init(&e->meta, "meta", &e->f);
    mf_init(&e->image, "image", &e->f);
    mf_init(&e->backing, "backing", &e->f);
    e->mio = mf_io(&e->meta, meta_truncate);
    e->iio = mf_io(&e->image, image_truncate);
    e->bio = mf_io(&e->backing, 1);
}

static void env_free(struct env *e)
{
    mf_free(&e->meta);
    mf_free(&e->image);
    mf_free(&e->backing);
}

static int no_contract_breach(struct env *e)
{
    memfile *all[3] = {&e->meta, &e->image, &e->backing};
    for (int i = 0; i < 3; i++) {
        CHECKF(atomic_load(&all[i]->past_end_reads) == 0,
               "%s: %ld preadv calls reached past the end (never asked for, says the header)",
               all[i]->name, atomic_load(&all[i]->past_end_reads));
        CHECKF(atomic_load(&all[i]->bad_calls) == 0, "%s: %ld calls with a bad iovec",
               all[i]->name, atomic_load(&all[i]->bad_calls));
    }
    CHECKF(atomic_load(&e->backing.n_pwritev) == 0 && atomic_load(&e->backing.n_truncate) == 0,
           "the backing file was written to");
    return T_PASS;
}

/* ------------------------------------------------------------------ basics */

/* ADDCOW_IOV_MAX guest buffers, written into unallocated clusters (completed from the backing
 * file) and read back: the callbacks see at most ADDCOW_IOV_MAX + 2 iovecs (memio counts more
 * as a contract breach). */
int case_io_iov_max(const char *dir)
{
    (void)dir;
    struct env e;
    env_init(&e, 1, 1);
    const uint64_t size = 2 * CL;
    mf_make_meta(&e.meta, "image.raw", "base.raw", size);
    mf_set_zero(&e.image, size);
    mf_set_pat(&e.backing, size, 1);
    uint8_t *model = xmalloc(size);
    fill_pat(model, size, 1, 0);
    struct iovec *iov = xcalloc(ADDCOW_IOV_MAX * sizeof *iov);
    uint8_t *data = xmalloc(ADDCOW_IOV_MAX);
    for (int i = 0; i < ADDCOW_IOV_MAX; i++)
        iov[i] = (struct iovec){data + i, 1};
    const uint64_t off = CL - ADDCOW_IOV_MAX / 2; /* crosses into cluster 1 */
    fill_pat(data, ADDCOW_IOV_MAX, 2, off);
    memcpy(model + off, data, ADDCOW_IOV_MAX);

    AddCowImage *img = NULL;
    CHECK_OK(addcow_open_io(&e.mio, &e.iio, &e.bio, ADDCOW_OPEN_RDWR, &img));
    CHECK_OK(addcow_writev(img, off, iov, ADDCOW_IOV_MAX));
    TRY(read_expect(img, 0, model, size, "after an ADDCOW_IOV_MAX-entry writev"));
    memset(data, 0, ADDCOW_IOV_MAX);
    CHECK_OK(addcow_readv(img, off, iov, ADDCOW_IOV_MAX));
    TRY(cmp_bytes(data, model + off, ADDCOW_IOV_MAX, off, "ADDCOW_IOV_MAX-entry readv"));
    CHECK_RC(addcow_writev(img, off, iov, ADDCOW_IOV_MAX + 1), -EINVAL);
    CHECK_OK(addcow_close(img));
    TRY(no_contract_breach(&e));
    free(iov);
    free(data);
    free(model);
    env_free(&e);
    return T_PASS;
}

int case_io_basic(const char *dir)
{
    (void)dir;
    struct env e;
    env_init(&e, 1, 1);
    const uint64_t size = 3 * CL + 100, blen = 2 * CL + 333;
    mf_make_meta(&e.meta, "image.raw", "base.raw", size);
    mf_set_zero(&e.image, size);
    mf_set_pat(&e.backing, blen, 1);
    uint8_t *model = xcalloc(size);
    fill_pat(model, blen, 1, 0);

    AddCowImage *img = SENTINEL;
    CHECK_OK(addcow_open_io(&e.mio, &e.iio, &e.bio, ADDCOW_OPEN_RDWR, &img));
    CHECK(img != NULL && img != SENTINEL);
    CHECK_RC(addcow_get_length(img), size);
    CHECK_RC(addcow_get_cluster_size(img), 65536);
    CHECK_RC(addcow_get_backing_length(img), blen);
    TRY(read_expect(img, 0, model, size, "host I/O, before writes"));

    uint8_t data[200];
    fill_pat(data, sizeof data, 2, CL - 100);
    struct iovec iov[3] = {{data, 1}, {data + 1, 150}, {data + 151, 49}};
    CHECK_OK(addcow_writev(img, CL - 100, iov, 3)); /* clusters 0 and 1 */
    memcpy(model + CL - 100, data, sizeof data);
    fill_pat(data, 10, 3, 3 * CL + 10);
    CHECK_OK(addcow_pwrite(img, 3 * CL + 10, data, 10)); /* cluster 3, past the backing end */
    memcpy(model + 3 * CL + 10, data, 10);
    TRY(read_expect(img, 0, model, size, "host I/O, after writes"));
    uint64_t pnum;
    CHECK_RC(addcow_is_allocated(img, 0, size, &pnum), 1);
    CHECK_RC(pnum, 2 * CL);
    CHECK_RC(addcow_is_allocated(img, 2 * CL, size, &pnum), 0);
    CHECK_RC(pnum, CL);
    CHECK_RC(addcow_is_allocated(img, 3 * CL, size, &pnum), 1);
    CHECK_RC(pnum, 100);
    CHECK_OK(addcow_flush(img));
    CHECK(atomic_load(&e.image.n_flush) > 0 && atomic_load(&e.meta.n_flush) > 0);
    /* The in-memory files hold whole clusters and the bits. */
    CHECK(e.image.len == size);
    TRY(cmp_bytes(e.image.data, model, 2 * CL, 0, "image file clusters 0-1"));
    TRY(cmp_bytes(e.image.data + 3 * CL, model + 3 * CL, 100, 3 * CL, "image file cluster 3"));
    CHECK(e.meta.len == HDR + 1);
    CHECKF(e.meta.data[HDR] == 0x0B, "bitmap byte %#x, want 0x0b", e.meta.data[HDR]);
    CHECK_OK(addcow_close(img));
    TRY(no_contract_breach(&e));

    CHECK_OK(addcow_open_io(&e.mio, &e.iio, &e.bio, 0, &img));
    TRY(read_expect(img, 0, model, size, "host I/O, reopened"));
    uint8_t b[1];
    CHECK_RC(addcow_pwrite(img, 0, b, 1), -EPERM);
    CHECK_RC(addcow_truncate(img, CL), -EPERM);
    CHECK_OK(addcow_close(img));
    /* Without the backing file: unallocated cluster 2 reads zeros. */
    memset(model + 2 * CL, 0, CL);
    CHECK_OK(addcow_open_io(&e.mio, &e.iio, NULL, 0, &img));
    CHECK_RC(addcow_get_backing_length(img), 0);
    TRY(read_expect(img, 0, model, size, "host I/O, backing NULL"));
    CHECK_OK(addcow_close(img));
    CHECK_OK(addcow_open_io(&e.mio, &e.iio, &e.bio, ADDCOW_OPEN_NO_BACKING, &img));
    CHECK_RC(addcow_get_backing_length(img), 0);
    TRY(read_expect(img, 0, model, size, "host I/O, ADDCOW_OPEN_NO_BACKING"));
    CHECK_OK(addcow_close(img));
    TRY(no_contract_breach(&e));
    free(model);
    env_free(&e);
    return T_PASS;
}

int case_io_header_read_io(const char *dir)
{
    (void)dir;
    struct env e;
    env_init(&e, 1, 1);
    mf_make_meta(&e.meta, "image.raw", "/golden/base.img", 7 * CL);
    AddCowHeader *h = SENTINEL;
    CHECK_OK(addcow_header_read_io(&e.mio, &h));
    CHECK(h != NULL && h != SENTINEL);
    CHECK_RC(addcow_header_layout(h), 1);
    CHECK_RC(addcow_header_cluster_size(h), 65536);
    CHECK(strcmp(addcow_header_image_file(h), "image.raw") == 0);
    CHECK(strcmp(addcow_header_backing_file(h), "/golden/base.img") == 0);
    addcow_header_free(h);
    CHECKF(atomic_load(&e.meta.n_pwritev) == 0 && atomic_load(&e.meta.n_flush) == 0 &&
               atomic_load(&e.meta.n_truncate) == 0,
           "header_read_io called more than preadv and get_length");
    CHECK(atomic_load(&e.meta.n_preadv) > 0);

    mf_make_meta(&e.meta, "only-image.raw", NULL, CL);
    CHECK_OK(addcow_header_read_io(&e.mio, &h));
    CHECK(addcow_header_backing_file(h) == NULL);
    CHECK(strcmp(addcow_header_image_file(h), "only-image.raw") == 0);
    addcow_header_free(h);

    e.meta.data[0] = 'X';
    h = SENTINEL;
    CHECK_RC(addcow_header_read_io(&e.mio, &h), -EINVAL);
    CHECK(h == NULL);
    e.meta.data[0] = 'A';
    e.meta.data[11] = 2;
    h = SENTINEL;
    CHECK_RC(addcow_header_read_io(&e.mio, &h), -ENOTSUP);
    CHECK(h == NULL);
    e.meta.data[11] = 1;
    CHECK_RC(addcow_header_read_io(&e.mio, NULL), -EINVAL);
    /* Host errors pass through. */
    e.f.err = EIO;
    for (long n = 1; n <= 2; n++) {
        atomic_store(&e.f.calls, 0);
        e.f.fail_at = n;
        h = SENTINEL;
        CHECK_RC(addcow_header_read_io(&e.mio, &h), -EIO);
        CHECK(h == NULL);
        CHECK(addcow_last_error()[0] != '\0');
    }
    e.f.fail_at = 0;
    CHECK_OK(addcow_header_read_io(&e.mio, &h));
    addcow_header_free(h);
    env_free(&e);
    /* "-errno (NULL stored) as for addcow_open", for a NULL table too. */
    h = SENTINEL;
    CHECK_RC(addcow_header_read_io(NULL, &h), -EINVAL);
    CHECKF(h == NULL, "addcow_header_read_io(NULL meta): *out is not NULL after failure");
    return T_PASS;
}

int case_io_open_io_args(const char *dir)
{
    (void)dir;
    struct env e;
    env_init(&e, 1, 1);
    mf_make_meta(&e.meta, "image.raw", "base.raw", CL);
    mf_set_zero(&e.image, CL);
    mf_set_pat(&e.backing, CL, 1);
    AddCowImage *img = NULL;
    CHECK_RC(addcow_open_io(NULL, &e.iio, &e.bio, 0, &img), -EINVAL);
    CHECK_RC(addcow_open_io(&e.mio, NULL, &e.bio, 0, &img), -EINVAL);
    CHECK_RC(addcow_open_io(&e.mio, &e.iio, &e.bio, 0, NULL), -EINVAL);
    CHECK_RC(addcow_open_io(&e.mio, &e.iio, &e.bio, 1u << 6, &img), -EINVAL); /* unknown */
    CHECK_RC(addcow_open_io(&e.mio, &e.iio, &e.bio, ADDCOW_OPEN_BACKING_ADDCOW, &img), -EINVAL);
    for (int which = 0; which < 4; which++) {
        AddCowIo t = e.iio;
        if (which == 0)
            t.preadv = NULL;
        else if (which == 1)
            t.pwritev = NULL;
        else if (which == 2)
            t.flush = NULL;
        else
            t.get_length = NULL;
        CHECKF(addcow_open_io(&e.mio, &t, &e.bio, 0, &img) == -EINVAL,
               "image table missing callback %d accepted", which);
        CHECKF(addcow_open_io(&t, &e.iio, &e.bio, 0, &img) == -EINVAL,
               "meta table missing callback %d accepted", which);
    }
    e.meta.data[3] = 0;
    CHECK_RC(addcow_open_io(&e.mio, &e.iio, &e.bio, 0, &img), -EINVAL);
    e.meta.data[3] = '_';
    e.meta.data[11] = 3;
    CHECK_RC(addcow_open_io(&e.mio, &e.iio, &e.bio, 0, &img), -ENOTSUP);
    e.meta.data[11] = 1;
    /* Host errors at open pass through. */
    e.f.err = ENOSPC;
    atomic_store(&e.f.calls, 0);
    e.f.fail_at = 1;
    CHECK_RC(addcow_open_io(&e.mio, &e.iio, &e.bio, 0, &img), -ENOSPC);
    e.f.fail_at = 0;
    CHECK_OK(addcow_open_io(&e.mio, &e.iio, &e.bio, 0, &img));
    CHECK_OK(addcow_close(img));
    env_free(&e);
    return T_PASS;
}

/* "flags as for addcow_open": on failure *out is NULL, whatever the reason. */
int case_io_open_io_out_null(const char *dir)
{
    (void)dir;
    struct env e;
    env_init(&e, 1, 1);
    mf_make_meta(&e.meta, "image.raw", NULL, CL);
    mf_set_zero(&e.image, CL);
    AddCowImage *img;
    const char *what[5] = {"NULL meta", "bad magic", "unknown flag bit",
                           "ADDCOW_OPEN_BACKING_ADDCOW", "get_length fails"};
    int bad = 0;
    for (int i = 0; i < 5; i++) {
        img = SENTINEL;
        const AddCowIo *m = i == 0 ? NULL : &e.mio;
        uint32_t fl = i == 2 ? 1u << 9 : i == 3 ? ADDCOW_OPEN_BACKING_ADDCOW : 0;
        e.meta.data[0] = i == 1 ? 'Z' : 'A';
        e.f.err = EIO;
        e.f.fail_at = i == 4 ? 1 : 0;
        atomic_store(&e.f.calls, 0);
        int rc = addcow_open_io(m, &e.iio, NULL, fl, &img);
        if (rc >= 0) {
            t_fail(__FILE__, __LINE__, "%s: addcow_open_io returned %d", what[i], rc);
            bad = 1;
        } else if (img != NULL) {
            t_fail(__FILE__, __LINE__, "%s: addcow_open_io failed (%d) but left *out = %p",
                   what[i], rc, (void *)img);
            bad = 1;
        }
    }
    env_free(&e);
    return bad ? T_FAIL : T_PASS;
}

/* addcow_open_io_ext: NULL options, every flag that applies, the versioned struct. */
int case_io_open_io_ext(const char *dir)
{
    (void)dir;
    struct env e;
    env_init(&e, 1, 1);
    mf_make_meta(&e.meta, "image.raw", "base.raw", 2 * CL);
    mf_set_zero(&e.image, 2 * CL);
    mf_set_pat(&e.backing, 2 * CL, 1);
    uint8_t *base = xmalloc(2 * CL);
    fill_pat(base, 2 * CL, 1, 0);
    AddCowImage *img = SENTINEL;
    uint8_t b = 0x77;
    CHECK_OK(addcow_open_io_ext(&e.mio, &e.iio, &e.bio, NULL, &img)); /* defaults: read-only */
    CHECK(img != NULL && img != SENTINEL);
    CHECK_RC(addcow_pwrite(img, 0, &b, 1), -EPERM);
    TRY(read_expect(img, 0, base, 2 * CL, "NULL options"));
    CHECK_OK(addcow_close(img));

    AddCowOpenOptions o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.flags = ADDCOW_OPEN_RDWR;
    o.bitmap_cache_size = 4096; /* accepted */
    CHECK_OK(addcow_open_io_ext(&e.mio, &e.iio, &e.bio, &o, &img));
    CHECK_OK(addcow_pwrite(img, CL + 5, &b, 1));
    base[CL + 5] = b;
    CHECK_OK(addcow_close(img));
    CHECK(e.image.data[CL + 5] == b && e.meta.data[HDR] == 0x02);

    o.flags = ADDCOW_OPEN_NO_BACKING;
    o.bitmap_cache_size = 0;
    CHECK_OK(addcow_open_io_ext(&e.mio, &e.iio, &e.bio, &o, &img));
    CHECK_RC(addcow_get_backing_length(img), 0);
    uint8_t z[32];
    CHECK_OK(addcow_pread(img, 0, z, sizeof z));
    CHECK(all_zero(z, sizeof z));
    CHECK_OK(addcow_close(img));
    o.flags = ADDCOW_OPEN_FORCE_SHARE; /* accepted; the host locks its files itself */
    CHECK_OK(addcow_open_io_ext(&e.mio, &e.iio, &e.bio, &o, &img));
    TRY(read_expect(img, 0, base, 2 * CL, "FORCE_SHARE"));
    CHECK_OK(addcow_close(img));

    /* An older caller's 8 bytes: its flags are read. */
    o.struct_size = 8;
    o.flags = ADDCOW_OPEN_RDWR;
    o.bitmap_cache_size = 12345; /* past struct_size */
    CHECK_OK(addcow_open_io_ext(&e.mio, &e.iio, &e.bio, &o, &img));
    CHECK_OK(addcow_pwrite(img, CL + 6, &b, 1));
    base[CL + 6] = b;
    CHECK_OK(addcow_close(img));
    /* Too small, or refused flags: -EINVAL and *out NULL. */
    const uint32_t small[] = {0, 4, 7};
    for (size_t i = 0; i < 3; i++) {
        o.struct_size = small[i];
        img = SENTINEL;
        CHECKF(addcow_open_io_ext(&e.mio, &e.iio, &e.bio, &o, &img) == -EINVAL,
               "struct_size %u", small[i]);
        CHECK(img == NULL);
    }
    o.struct_size = sizeof o;
    const uint32_t bad[] = {1u << 8, 1u << 31, ADDCOW_OPEN_BACKING_ADDCOW, ADDCOW_OPEN_CONFINE,
                            ADDCOW_OPEN_DIRECT};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o.flags = bad[i];
        img = SENTINEL;
        CHECKF(addcow_open_io_ext(&e.mio, &e.iio, &e.bio, &o, &img) == -EINVAL, "flags %#x",
               bad[i]);
        CHECK(img == NULL);
    }
    /* A newer caller's larger struct: zero tail accepted, anything else -ENOTSUP. */
    struct {
        AddCowOpenOptions o;
        uint64_t future[2];
    } big;
    memset(&big, 0, sizeof big);
    big.o.struct_size = sizeof big;
    CHECK_OK(addcow_open_io_ext(&e.mio, &e.iio, &e.bio, &big.o, &img));
    TRY(read_expect(img, 0, base, 2 * CL, "larger options"));
    CHECK_OK(addcow_close(img));
    big.future[1] = 1;
    img = SENTINEL;
    CHECK_RC(addcow_open_io_ext(&e.mio, &e.iio, &e.bio, &big.o, &img), -ENOTSUP);
    CHECK(img == NULL);
    /* NULL tables and out. */
    o.flags = 0;
    img = SENTINEL;
    CHECK_RC(addcow_open_io_ext(NULL, &e.iio, &e.bio, &o, &img), -EINVAL);
    CHECK(img == NULL);
    CHECK_RC(addcow_open_io_ext(&e.mio, NULL, &e.bio, &o, &img), -EINVAL);
    CHECK_RC(addcow_open_io_ext(&e.mio, &e.iio, &e.bio, &o, NULL), -EINVAL);
    TRY(no_contract_breach(&e));
    free(base);
    env_free(&e);
    return T_PASS;
}

/* The host resolves the names of its files: confinement does not apply, and is refused. */
int case_io_open_io_confine_refused(const char *dir)
{
    (void)dir;
    struct env e;
    env_init(&e, 1, 1);
    mf_make_meta(&e.meta, "/elsewhere/image.raw", "../base.raw", CL);
    mf_set_zero(&e.image, CL);
    mf_set_pat(&e.backing, CL, 1);
    const uint32_t fl[] = {ADDCOW_OPEN_CONFINE, ADDCOW_OPEN_CONFINE | ADDCOW_OPEN_RDWR};
    for (size_t i = 0; i < 2; i++) {
        AddCowImage *img = SENTINEL;
        CHECK_RC(addcow_open_io(&e.mio, &e.iio, &e.bio, fl[i], &img), -EINVAL);
        CHECK(img == NULL);
        CHECKF(strstr(addcow_last_error(), "CONFINE") != NULL, "last_error: %s",
               addcow_last_error());
        AddCowOpenOptions o;
        memset(&o, 0, sizeof o);
        o.struct_size = sizeof o;
        o.flags = fl[i];
        img = SENTINEL;
        CHECK_RC(addcow_open_io_ext(&e.mio, &e.iio, &e.bio, &o, &img), -EINVAL);
        CHECK(img == NULL);
    }
    CHECK(atomic_load(&e.meta.n_pwritev) == 0 && atomic_load(&e.image.n_pwritev) == 0);
    env_free(&e);
    return T_PASS;
}

static int64_t huge_length(void *opaque)
{
    (void)opaque;
    return (int64_t)ADDCOW_MAX_SIZE + 1;
}

static int64_t max_length(void *opaque)
{
    (void)opaque;
    return INT64_MAX;
}

/* A host image file larger than ADDCOW_MAX_SIZE: -EFBIG at open; truncate beyond it: -EFBIG,
 * nothing resized. */
int case_io_efbig(const char *dir)
{
    (void)dir;
    struct env e;
    env_init(&e, 1, 1);
    mf_make_meta(&e.meta, "image.raw", NULL, 2 * CL);
    mf_set_zero(&e.image, 2 * CL);
    int64_t (*lengths[2])(void *) = {huge_length, max_length};
    for (int i = 0; i < 2; i++) {
        AddCowIo huge = e.iio;
        huge.get_length = lengths[i];
        for (uint32_t fl = 0; fl <= ADDCOW_OPEN_RDWR; fl++) {
            AddCowImage *img = SENTINEL;
            CHECK_RC(addcow_open_io(&e.mio, &huge, NULL, fl, &img), -EFBIG);
            CHECK(img == NULL);
            CHECK(addcow_last_error()[0] != '\0');
        }
    }
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open_io(&e.mio, &e.iio, NULL, ADDCOW_OPEN_RDWR, &img));
    const uint64_t sizes[] = {(uint64_t)ADDCOW_MAX_SIZE + 1, UINT64_MAX};
    for (size_t i = 0; i < 2; i++) {
        CHECK_RC(addcow_truncate(img, sizes[i]), -EFBIG);
        CHECK_RC(addcow_get_length(img), 2 * CL);
    }
    CHECK_OK(addcow_close(img));
    CHECK(e.image.len == 2 * CL && e.meta.len == HDR + 1);
    CHECKF(atomic_load(&e.image.n_truncate) == 0 && atomic_load(&e.meta.n_truncate) == 0,
           "a refused truncate resized a host file");
    env_free(&e);
    return T_PASS;
}

/* ------------------------------------------------------------------ truncate callbacks */

int case_io_truncate_null_callback(const char *dir)
{
    (void)dir;
    struct env e;
    env_init(&e, 0, 0);
    const uint64_t size = 2 * CL;
    mf_make_meta(&e.meta, "image.raw", NULL, size);
    mf_set_zero(&e.image, size);
    uint8_t *model = xcalloc(size);
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open_io(&e.mio, &e.iio, NULL, ADDCOW_OPEN_RDWR, &img));
    fill_pat(model + 100, 1000, 2, 100);
    CHECK_OK(addcow_pwrite(img, 100, model + 100, 1000));
    CHECK_RC(addcow_truncate(img, 4 * CL), -ENOTSUP);
    CHECK(addcow_last_error()[0] != '\0');
    CHECK_RC(addcow_get_length(img), size);
    CHECK_RC(addcow_truncate(img, CL / 2), -ENOTSUP);
    CHECK_RC(addcow_get_length(img), size);
    TRY(read_expect(img, 0, model, size, "after refused truncates"));
    fill_pat(model + CL + 5, 5, 3, CL + 5);
    CHECK_OK(addcow_pwrite(img, CL + 5, model + CL + 5, 5));
    CHECK_OK(addcow_close(img));
    CHECK(e.image.len == size && e.meta.len == HDR + 1);
    CHECK_OK(addcow_open_io(&e.mio, &e.iio, NULL, 0, &img));
    CHECK_RC(addcow_get_length(img), size);
    TRY(read_expect(img, 0, model, size, "reopened"));
    CHECK_OK(addcow_close(img));
    free(model);
    env_free(&e);
    return T_PASS;
}

/* The .add-cow file can be resized but the image file cannot: the truncate fails and the
 * image keeps its size *and its data* (allocated clusters past the refused new end too). */
int case_io_truncate_image_fails_keeps_data(const char *dir)
{
    (void)dir;
    struct env e;
    env_init(&e, 0, 1);
    const uint64_t size = 4 * CL;
    mf_make_meta(&e.meta, "image.raw", "base.raw", size);
    mf_set_zero(&e.image, size);
    mf_set_pat(&e.backing, size, 1);
    uint8_t *model = xmalloc(size);
    fill_pat(model, size, 1, 0);
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open_io(&e.mio, &e.iio, &e.bio, ADDCOW_OPEN_RDWR, &img));
    fill_pat(model + CL, CL, 2, CL);
    CHECK_OK(addcow_pwrite(img, CL, model + CL, CL));
    fill_pat(model + 3 * CL, CL, 3, 3 * CL);
    CHECK_OK(addcow_pwrite(img, 3 * CL, model + 3 * CL, CL));
    CHECK_OK(addcow_flush(img));
    CHECK_RC(addcow_truncate(img, CL + 10), -ENOTSUP);
    CHECK_RC(addcow_get_length(img), size);
    TRY(read_expect(img, 0, model, size, "after a failed shrink (same handle)"));
    CHECK_RC(addcow_truncate(img, 6 * CL), -ENOTSUP);
    CHECK_RC(addcow_get_length(img), size);
    TRY(read_expect(img, 0, model, size, "after a failed grow (same handle)"));
    CHECK_OK(addcow_close(img));
    CHECK_OK(addcow_open_io(&e.mio, &e.iio, &e.bio, 0, &img));
    CHECK_RC(addcow_get_length(img), size);
    TRY(read_expect(img, 0, model, size, "after failed truncates, reopened"));
    CHECK_OK(addcow_close(img));
    free(model);
    env_free(&e);
    return T_PASS;
}

/* ------------------------------------------------------------------ concurrency */

int case_io_concurrent_cow(const char *dir)
{
    (void)dir;
    const uint64_t size = 6 * CL;
    uint8_t *base = xmalloc(size), *expect = xmalloc(size);
    fill_pat(base, size, 1, 0);
    for (int round = 0; round < 3; round++) {
        struct env e;
        env_init(&e, 1, 1);
        mf_make_meta(&e.meta, "image.raw", "base.raw", size);
        mf_set_zero(&e.image, size);
        mf_set(&e.backing, base, size);
        AddCowImage *img = NULL;
        uint32_t fl = ADDCOW_OPEN_RDWR | (round == 2 ? ADDCOW_OPEN_WRITETHROUGH : 0);
        CHECK_OK(addcow_open_io(&e.mio, &e.iio, &e.bio, fl, &img));
        TRY(cow038_round(img, base, size, round, 16, expect));
        CHECK_OK(addcow_close(img));
        TRY(cmp_bytes(e.image.data + CL, expect + CL, 4 * CL, CL, "image file clusters 1-4"));
        CHECKF(e.meta.data[HDR] == 0x1e, "bitmap byte %#x, want 0x1e", e.meta.data[HDR]);
        CHECK_OK(addcow_open_io(&e.mio, &e.iio, &e.bio, 0, &img));
        TRY(read_expect(img, 0, expect, size, "reopened"));
        CHECK_OK(addcow_close(img));
        TRY(no_contract_breach(&e));
        env_free(&e);
    }
    free(base);
    free(expect);
    return T_PASS;
}

/* ------------------------------------------------------------------ fault injection */

/*
 * The workload, over a backing file longer than the image (so that growing must zero):
 *   setup (no faults): cluster 1 written whole; size S0 = 3.5 clusters.
 *   open_io RDWR, then the ops below, then close.
 * Each cluster's content is changed by one write at most (cluster 3 also by the truncate,
 * which does not change what it reads), so every cluster has one old and one new content.
 */
#define FW_S0 (3 * CL + CL / 2)
#define FW_S1 (5 * CL + CL / 4)
#define FW_BL (6 * CL - 1000)
#define FW_NCL 6

enum { OP_WRITE, OP_WRITEV, OP_FLUSH, OP_TRUNCATE };
static const char *op_names[] = {"write", "writev", "flush", "truncate"};

static const struct fw_op {
    int kind;
    uint64_t off, len;
    uint32_t seed;
} fw_ops[] = {
    {OP_WRITE, CL / 2 + 5 * SEC, CL / 2 - 5 * SEC + 4096, 3}, /* c0 allocating, c1 in place */
    {OP_WRITEV, 2 * CL + 7 * SEC, CL - 10 * SEC, 4},          /* c2 allocating, head + tail */
    {OP_FLUSH, 0, 0, 0},
    {OP_TRUNCATE, FW_S1, 0, 0}, /* grow: c3 completed, c3's tail, c4, c5 zeros */
    {OP_WRITE, 3 * CL + CL / 2 - SEC, 2 * SEC, 5}, /* c3, across the old end */
    {OP_WRITEV, 4 * CL + SEC, CL + SEC, 6},        /* c4, c5 */
    {OP_FLUSH, 0, 0, 0},
};
#define FW_NOPS ((int)(sizeof fw_ops / sizeof fw_ops[0]))

struct fw {
    struct env e;
    uint8_t *snap_meta, *snap_image;
    size_t snap_meta_len, snap_image_len;
    uint8_t *old, *new, *got;
};

#define NOT_RUN INT_MIN /* an op not attempted (open_io failed) */

struct fw_res {
    int rc[FW_NOPS + 2]; /* [0] open, [1..FW_NOPS] ops, [FW_NOPS+1] close */
    int first;           /* index of the first failing call, -1 if none */
    int first_msg_empty;
    long calls, fired;
};

static const char *step_name(int i)
{
    static char buf[32];
    if (i == 0)
        return "open_io";
    if (i == FW_NOPS + 1)
        return "close";
    snprintf(buf, sizeof buf, "op %d (%s)", i, op_names[fw_ops[i - 1].kind]);
    return buf;
}

static int fw_setup(struct fw *w)
{
    env_init(&w->e, 1, 1);
    mf_make_meta(&w->e.meta, "image.raw", "base.raw", FW_S0);
    mf_set_zero(&w->e.image, FW_S0);
    mf_set_pat(&w->e.backing, FW_BL, 1);
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open_io(&w->e.mio, &w->e.iio, &w->e.bio, ADDCOW_OPEN_RDWR, &img));
    uint8_t *c1 = xmalloc(CL);
    fill_pat(c1, CL, 2, CL);
    CHECK_OK(addcow_pwrite(img, CL, c1, CL));
    free(c1);
    CHECK_OK(addcow_close(img));
    mf_commit(&w->e.meta);
    mf_commit(&w->e.image);
    w->snap_meta_len = w->e.meta.len;
    w->snap_meta = xmalloc(w->snap_meta_len);
    memcpy(w->snap_meta, w->e.meta.data, w->snap_meta_len);
    w->snap_image_len = w->e.image.len;
    w->snap_image = xmalloc(w->snap_image_len);
    memcpy(w->snap_image, w->e.image.data, w->snap_image_len);
    CHECK(w->snap_meta_len == HDR + 1 && w->snap_meta[HDR] == 0x02);

    w->old = xcalloc(FW_S1);
    w->new = xmalloc(FW_S1);
    w->got = xmalloc(FW_S1);
    fill_pat(w->old, FW_S0, 1, 0);
    fill_pat(w->old + CL, CL, 2, CL);
    memcpy(w->new, w->old, FW_S1);
    for (int i = 0; i < FW_NOPS; i++)
        if (fw_ops[i].kind == OP_WRITE || fw_ops[i].kind == OP_WRITEV)
            fill_pat(w->new + fw_ops[i].off, fw_ops[i].len, fw_ops[i].seed, fw_ops[i].off);
    return T_PASS;
}

static void fw_free(struct fw *w)
{
    free(w->snap_meta);
    free(w->snap_image);
    free(w->old);
    free(w->new);
    free(w->got);
    env_free(&w->e);
}

static void fw_note(struct fw_res *r, int i, int rc)
{
    r->rc[i] = rc;
    if (rc != 0 && r->first < 0) {
        r->first = i;
        r->first_msg_empty = addcow_last_error()[0] == '\0';
    }
}

static void fw_run(struct fw *w, long fail_at, int sticky, int err, uint32_t flags,
                   struct fw_res *r)
{
    mf_set(&w->e.meta, w->snap_meta, w->snap_meta_len);
    mf_set(&w->e.image, w->snap_image, w->snap_image_len);
    struct faults *f = &w->e.f;
    atomic_store(&f->calls, 0);
    atomic_store(&f->fired, 0);
    f->fail_at = fail_at;
    f->sticky = sticky;
    f->err = err;
    memset(r, 0, sizeof *r);
    for (int i = 0; i < FW_NOPS + 2; i++)
        r->rc[i] = NOT_RUN;
    r->first = -1;
    AddCowImage *img = NULL;
    fw_note(r, 0, addcow_open_io(&w->e.mio, &w->e.iio, &w->e.bio, ADDCOW_OPEN_RDWR | flags,
                                 &img));
    for (int i = 0; img && i < FW_NOPS; i++) {
        const struct fw_op *op = &fw_ops[i];
        uint8_t *data = w->new + op->off;
        int rc = 0;
        switch (op->kind) {
        case OP_WRITE:
            rc = addcow_pwrite(img, op->off, data, op->len);
            break;
        case OP_WRITEV: {
            size_t a = (size_t)op->len / 3, b = (size_t)op->len / 3 + 7;
            struct iovec iov[3] = {{data, a}, {data + a, b}, {data + a + b, op->len - a - b}};
            rc = addcow_writev(img, op->off, iov, 3);
            break;
        }
        case OP_FLUSH:
            rc = addcow_flush(img);
            break;
        case OP_TRUNCATE:
            rc = addcow_truncate(img, op->off);
            break;
        }
        fw_note(r, i + 1, rc);
    }
    fw_note(r, FW_NOPS + 1, addcow_close(img)); /* NULL after a failed open: 0 */
    r->calls = atomic_load(&f->calls);
    r->fired = atomic_load(&f->fired);
    f->fail_at = 0;
}

/* Whether op i's effect was made durable: it succeeded and so did a later flush or close
 * (or, for a write in writethrough mode, at once). */
static int committed(const struct fw_res *r, int i, int writethrough)
{
    if (r->rc[i + 1] != 0)
        return 0;
    if (writethrough && fw_ops[i].kind != OP_TRUNCATE) /* the header: "each write" */
        return 1;
    for (int j = i + 1; j < FW_NOPS; j++)
        if (fw_ops[j].kind == OP_FLUSH && r->rc[j + 1] == 0)
            return 1;
    return r->rc[FW_NOPS + 1] == 0;
}

/* Checks one run; on a problem writes a one-line description to `why`, returns 1. */
static int fw_check(struct fw *w, const struct fw_res *r, long n, int err, int crash,
                    int writethrough, char *why, size_t whylen)
{
    if (n > 0) {
        if (r->fired == 0) {
            snprintf(why, whylen, "the fault was never reached (%ld calls)", r->calls);
            return 1;
        }
        if (r->first < 0) {
            snprintf(why, whylen, "the injected error was swallowed: every call returned 0");
            return 1;
        }
        if (r->rc[r->first] != -err) {
            snprintf(why, whylen, "first failing call %s returned %d (%s), want %d",
                     step_name(r->first), r->rc[r->first], errname(r->rc[r->first]), -err);
            return 1;
        }
        if (r->first_msg_empty) {
            snprintf(why, whylen, "%s failed but addcow_last_error() is empty",
                     step_name(r->first));
            return 1;
        }
    } else if (r->first >= 0) {
        snprintf(why, whylen, "no fault, but %s returned %d: %s", step_name(r->first),
                 r->rc[r->first], addcow_last_error());
        return 1;
    }
    /* Which clusters must read new: those of committed writes. */
    int must_new[FW_NCL] = {0};
    int grown = 0;
    for (int i = 0; i < FW_NOPS; i++) {
        if (!committed(r, i, writethrough))
            continue;
        if (fw_ops[i].kind == OP_TRUNCATE)
            grown = 1;
        if (fw_ops[i].kind == OP_WRITE || fw_ops[i].kind == OP_WRITEV)
            for (uint64_t c = fw_ops[i].off / CL; c <= (fw_ops[i].off + fw_ops[i].len - 1) / CL;
                 c++)
                must_new[c] = 1;
    }
    if (crash) {
        mf_crash(&w->e.meta);
        mf_crash(&w->e.image);
    }
    AddCowImage *img = NULL;
    int rc = addcow_open_io(&w->e.mio, &w->e.iio, &w->e.bio, 0, &img);
    if (rc != 0) {
        snprintf(why, whylen, "reopen failed: %d %s", rc, addcow_last_error());
        return 1;
    }
    int64_t len = addcow_get_length(img);
    if (len != (int64_t)FW_S0 && len != (int64_t)FW_S1) {
        snprintf(why, whylen, "reopened length %lld is neither %llu nor %llu", (long long)len,
                 (unsigned long long)FW_S0, (unsigned long long)FW_S1);
        addcow_close(img);
        return 1;
    }
    if (grown && len != (int64_t)FW_S1) {
        snprintf(why, whylen, "the committed truncate is lost: length %lld", (long long)len);
        addcow_close(img);
        return 1;
    }
    rc = addcow_pread(img, 0, w->got, (size_t)len);
    addcow_close(img);
    if (rc != 0) {
        snprintf(why, whylen, "reading the reopened image: %d", rc);
        return 1;
    }
    for (uint64_t c = 0; c * CL < (uint64_t)len; c++) {
        uint64_t s = c * CL, e = (c + 1) * CL < (uint64_t)len ? (c + 1) * CL : (uint64_t)len;
        int is_old = memcmp(w->got + s, w->old + s, e - s) == 0;
        int is_new = memcmp(w->got + s, w->new + s, e - s) == 0;
        if (!is_new && (must_new[c] || !is_old)) {
            uint64_t xn = s, xo = s;
            while (xn < e && w->got[xn] == w->new[xn])
                xn++;
            while (xo < e && w->got[xo] == w->old[xo])
                xo++;
            uint64_t x = must_new[c] ? xn : xn > xo ? xn : xo;
            const char *kind = x < FW_BL && w->got[x] == pat(1, x) ? "backing data"
                               : w->got[x] == 0                   ? "zero"
                                                                  : "other";
            snprintf(why, whylen,
                     "length %lld: cluster %llu reads %s: differs from new at byte %llu, "
                     "from old at byte %llu; byte %llu is %s 0x%02x (old 0x%02x, new 0x%02x)",
                     (long long)len, (unsigned long long)c,
                     must_new[c] ? "not its new content after a committed write"
                                 : "neither its old nor its new content",
                     (unsigned long long)xn, (unsigned long long)xo, (unsigned long long)x,
                     kind, w->got[x], w->old[x], w->new[x]);
            return 1;
        }
    }
    if (no_contract_breach(&w->e) != T_PASS) {
        snprintf(why, whylen, "host I/O contract breached (see above)");
        return 1;
    }
    return 0;
}

static int fault_case(int err, int sticky, int crash, uint32_t flags)
{
    struct fw *w = xcalloc(sizeof *w);
    TRY(fw_setup(w));
    int wt = (flags & ADDCOW_OPEN_WRITETHROUGH) != 0;
    struct fw_res r;
    char why[512];
    /* Without faults: counts the calls, and checks the model. */
    fw_run(w, 0, 0, err, flags, &r);
    if (fw_check(w, &r, 0, err, crash, wt, why, sizeof why)) {
        t_fail(__FILE__, __LINE__, "without faults: %s", why);
        return T_FAIL;
    }
    CHECK(memcmp(w->got, w->new, FW_S1) == 0);
    long total = r.calls;
    CHECK(total > 10);
    long failures = 0;
    for (long n = 1; n <= total; n++) {
        fw_run(w, n, sticky, err, flags, &r);
        if (fw_check(w, &r, n, err, crash, wt, why, sizeof why)) {
            if (failures < 12)
                fprintf(stderr, "FAIL [%s] call %ld of %ld fails (first error at %s): %s\n",
                        g_case, n, total, r.first >= 0 ? step_name(r.first) : "-", why);
            failures++;
        }
    }
    t_note("%ld host calls; %ld fault points checked, %ld failed", total, total, failures);
    fw_free(w);
    free(w);
    CHECKF(failures == 0, "%ld of %ld fault points failed", failures, total);
    return T_PASS;
}

int case_io_fault_eio(const char *dir)
{
    (void)dir;
    return fault_case(EIO, 0, 0, 0);
}

int case_io_fault_enospc(const char *dir)
{
    (void)dir;
    return fault_case(ENOSPC, 0, 0, 0);
}

int case_io_fault_eio_writethrough(const char *dir)
{
    (void)dir;
    return fault_case(EIO, 0, 0, ADDCOW_OPEN_WRITETHROUGH);
}

/* A crash at every host call: every call from the Nth on fails, then the files are reopened
 * as they were at their last successful flush. */
int case_io_crash_writeback(const char *dir)
{
    (void)dir;
    return fault_case(EIO, 1, 1, 0);
}

int case_io_crash_writethrough(const char *dir)
{
    (void)dir;
    return fault_case(EIO, 1, 1, ADDCOW_OPEN_WRITETHROUGH);
}

/* ------------------------------------------------------------------ allocation races */

/*
 * A cluster's bit flips from 0 to 1 while other threads ask about it. One writer allocates
 * clusters from the last to the first (whole-cluster writes); readers ask is_allocated and
 * read from inside the cluster being allocated, across into the clusters allocated before.
 * Whatever the racing cluster reports, it must not spill over into its allocated neighbours,
 * and no call may fail.
 */
#define RACE_NCL 64

struct race {
    AddCowImage *img;
    const uint8_t *base, *data;
    atomic_long lowest;  /* clusters >= lowest are allocated (and written) */
    atomic_int done;
    int rc;
    char msg[300];
};

static void *race_writer(void *arg)
{
    struct race *r = arg;
    for (long c = RACE_NCL - 1; c >= 0 && !r->rc; c--) {
        int rc = addcow_pwrite(r->img, (uint64_t)c * CL, r->data + c * CL, CL);
        if (rc) {
            r->rc = rc;
            snprintf(r->msg, sizeof r->msg, "writer: cluster %ld: %d %s", c, rc,
                     addcow_last_error());
        }
        atomic_store(&r->lowest, c);
    }
    atomic_store(&r->done, 1);
    return NULL;
}

static void *race_reader(void *arg)
{
    struct race *r = arg;
    uint8_t *buf = xmalloc(3 * CL);
    for (unsigned long it = 0; !atomic_load(&r->done) && !r->rc; it++) {
        long lo = atomic_load(&r->lowest);
        if (lo == 0)
            continue;
        uint64_t off = (uint64_t)(lo - 1) * CL + 100 + (it % 7) * 512;
        uint64_t end = (uint64_t)RACE_NCL * CL;
        if (it % 32 != 31) {
            uint64_t pnum = 0;
            int rc = addcow_is_allocated(r->img, off, end - off, &pnum);
            uint64_t racing_left = (uint64_t)lo * CL - off; /* bytes left in cluster lo-1 */
            if (rc < 0 || (rc == 0 && pnum != racing_left) || (rc == 1 && pnum != end - off)) {
                r->rc = rc < 0 ? rc : -1000;
                snprintf(r->msg, sizeof r->msg,
                         "is_allocated(%llu, %llu) = %d pnum %llu while cluster %ld was being "
                         "allocated and clusters %ld.. were allocated (want 0 with pnum %llu, "
                         "or 1 with pnum %llu) %s", (unsigned long long)off,
                         (unsigned long long)(end - off), rc, (unsigned long long)pnum, lo - 1,
                         lo, (unsigned long long)racing_left, (unsigned long long)(end - off),
                         rc < 0 ? addcow_last_error() : "");
            }
            continue;
        }
        uint64_t len = end - off < 2 * CL ? end - off : 2 * CL;
        int rc = addcow_pread(r->img, off, buf, len);
        if (rc) {
            r->rc = rc;
            snprintf(r->msg, sizeof r->msg, "pread(%llu, %llu): %d %s",
                     (unsigned long long)off, (unsigned long long)len, rc, addcow_last_error());
            break;
        }
        for (uint64_t i = 0; i < len; i++) {
            uint64_t o = off + i;
            int settled = o >= (uint64_t)lo * CL; /* allocated before the read started */
            if (buf[i] != r->data[o] && (settled || buf[i] != r->base[o])) {
                r->rc = -1001;
                snprintf(r->msg, sizeof r->msg,
                         "pread(%llu, %llu): byte %llu (cluster %llu, %s) reads 0x%02x: not "
                         "its new 0x%02x%s", (unsigned long long)off, (unsigned long long)len,
                         (unsigned long long)o, (unsigned long long)(o / CL),
                         settled ? "allocated before the read" : "being allocated", buf[i],
                         r->data[o], settled ? "" : " nor its old");
                break;
            }
        }
    }
    free(buf);
    return NULL;
}

int case_io_concurrent_alloc_race(const char *dir)
{
    (void)dir;
    enum { READERS = 2 };
    /* The window is a few instructions wide: rounds for ~3 s (at least 3). */
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const uint64_t size = RACE_NCL * CL;
    uint8_t *base = xmalloc(size), *data = xmalloc(size);
    fill_pat(base, size, 1, 0);
    fill_pat(data, size, 2, 0);
    for (int round = 0;; round++) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        double el = (double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9;
        if (round >= 3 && el > 3.0) {
            t_note("%d rounds in %.1f s", round, el);
            break;
        }
        struct env e;
        env_init(&e, 1, 1);
        mf_make_meta(&e.meta, "image.raw", "base.raw", size);
        mf_set_zero(&e.image, size);
        mf_set(&e.backing, base, size);
        struct race r;
        memset(&r, 0, sizeof r);
        r.base = base;
        r.data = data;
        atomic_init(&r.lowest, RACE_NCL);
        atomic_init(&r.done, 0);
        CHECK_OK(addcow_open_io(&e.mio, &e.iio, &e.bio, ADDCOW_OPEN_RDWR, &r.img));
        pthread_t th[READERS + 1];
        for (int i = 0; i <= READERS; i++)
            CHECK(pthread_create(&th[i], NULL, i == 0 ? race_writer : race_reader, &r) == 0);
        for (int i = 0; i <= READERS; i++)
            pthread_join(th[i], NULL);
        CHECKF(r.rc == 0, "round %d: %s", round, r.msg);
        TRY(read_expect(r.img, 0, data, size, "after the round"));
        CHECK_OK(addcow_close(r.img));
        env_free(&e);
    }
    free(base);
    free(data);
    return T_PASS;
}
