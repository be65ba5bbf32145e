/*
 * The trust features of the C ABI on real files: addcow_open_ext and its versioned options,
 * image locks (EBUSY, ADDCOW_OPEN_FORCE_SHARE, host I/O locks nothing), confinement
 * (ADDCOW_OPEN_CONFINE, ADDCOW_CREATE_CONFINE: EACCES), sizes (EFBIG) and special files.
 */
#include "harness.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int dummy_handle;
#define SENTINEL ((void *)&dummy_handle)

/* EFBIG from the library's own limit (the OS gives EFBIG for large files too): its message
 * states the limit. */
#define CHECK_LIMIT_MSG()                                                              \
    do {                                                                               \
        char limit_[32];                                                               \
        snprintf(limit_, sizeof limit_, "%llu", (unsigned long long)ADDCOW_MAX_SIZE);  \
        CHECK_MSG(limit_);                                                             \
    } while (0)

static AddCowOpenOptions open_opts(uint32_t flags)
{
    AddCowOpenOptions o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.flags = flags;
    return o;
}

/* A layout-1 `.add-cow` file naming `image` and `backing` (NULL: none), every cluster of an
 * image of `size` bytes unallocated. Written byte by byte: no name is checked. */
static int write_meta(const char *path, const char *image, const char *backing, uint64_t size)
{
    size_t len = (size_t)(HDR + ((size + CL - 1) / CL + 7) / 8);
    uint8_t *h = xcalloc(len);
    memcpy(h, "ADD_COW\xff", 8);
    h[11] = 1;
    if (backing)
        memcpy(h + 12, backing, strlen(backing));
    memcpy(h + 1036, image, strlen(image));
    int r = write_file(path, h, len);
    free(h);
    return r;
}

/* Whether `img` accepts a write (1) or refuses it with -EPERM (0); anything else fails. */
static int writable(AddCowImage *img, int *out)
{
    uint8_t b = 0x42;
    int rc = addcow_pwrite(img, 0, &b, 1);
    CHECKF(rc == 0 || rc == -EPERM, "pwrite: %d (%s) %s", rc, errname(rc), addcow_last_error());
    *out = rc == 0;
    return T_PASS;
}

/* ------------------------------------------------------------------ addcow_open_ext */

int case_open_ext_null_opts(const char *dir)
{
    char meta[PATH_MAX];
    TRY(make_overlay(dir, meta, 2 * CL, 1, 0));
    AddCowImage *img = SENTINEL;
    CHECK_OK(addcow_open_ext(meta, NULL, &img)); /* NULL: the defaults, read-only */
    CHECK(img != NULL && img != SENTINEL);
    int w = -1;
    TRY(writable(img, &w));
    CHECKF(w == 0, "addcow_open_ext(path, NULL) opened read-write");
    uint8_t *want = xmalloc(2 * CL);
    fill_pat(want, 2 * CL, 1, 0);
    TRY(read_expect(img, 0, want, 2 * CL, "opened with NULL options"));
    free(want);
    CHECK_OK(addcow_close(img));
    AddCowOpenOptions o = open_opts(0);
    CHECK_RC(addcow_open_ext(meta, &o, NULL), -EINVAL);
    CHECK_RC(addcow_open_ext(meta, NULL, NULL), -EINVAL);
    img = SENTINEL;
    CHECK_RC(addcow_open_ext(NULL, &o, &img), -EINVAL);
    CHECKF(img == NULL, "addcow_open_ext(NULL path): *out is not NULL after failure");
    img = SENTINEL;
    char missing[PATH_MAX];
    pj(missing, dir, "missing-ext.add-cow");
    CHECK_RC(addcow_open_ext(missing, &o, &img), -ENOENT);
    CHECK(img == NULL);
    CHECK_MSG("missing-ext.add-cow");
    return T_PASS;
}

int case_open_ext_flags(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    TRY(make_overlay(dir, meta, 2 * CL, 1, 0));
    pj(raw, dir, "img.raw");
    AddCowImage *img = NULL;
    int w = -1;
    /* RDWR | WRITETHROUGH: the write is in the files before any flush. */
    AddCowOpenOptions o = open_opts(ADDCOW_OPEN_RDWR | ADDCOW_OPEN_WRITETHROUGH);
    CHECK_OK(addcow_open_ext(meta, &o, &img));
    uint8_t data[100];
    fill_pat(data, sizeof data, 2, CL + 10);
    CHECK_OK(addcow_pwrite(img, CL + 10, data, sizeof data));
    uint8_t bm = 0, got[100];
    TRY(pread_file(meta, HDR, &bm, 1));
    CHECKF(bm == 0x02, "bitmap byte %#x after a writethrough write, want 0x02", bm);
    TRY(pread_file(raw, CL + 10, got, sizeof got));
    TRY(cmp_bytes(got, data, sizeof got, CL + 10, "image file after a writethrough write"));
    CHECK_OK(addcow_close(img));
    /* NO_BACKING: cluster 0 reads zeros, cluster 1 the image file. */
    o = open_opts(ADDCOW_OPEN_NO_BACKING);
    CHECK_OK(addcow_open_ext(meta, &o, &img));
    CHECK_RC(addcow_get_backing_length(img), 0);
    uint8_t z[64];
    CHECK_OK(addcow_pread(img, 0, z, sizeof z));
    CHECK(all_zero(z, sizeof z));
    TRY(read_expect(img, CL + 10, data, sizeof data, "NO_BACKING, allocated cluster"));
    TRY(writable(img, &w));
    CHECK(w == 0);
    CHECK_OK(addcow_close(img));
    /* bitmap_cache_size is accepted (its effect is not part of this case). */
    const uint64_t caches[] = {1, 4096, 64u << 20};
    for (size_t i = 0; i < sizeof caches / sizeof caches[0]; i++) {
        o = open_opts(ADDCOW_OPEN_RDWR);
        o.bitmap_cache_size = caches[i];
        img = NULL;
        CHECKF(addcow_open_ext(meta, &o, &img) == 0, "bitmap_cache_size %llu: %s",
               (unsigned long long)caches[i], addcow_last_error());
        TRY(read_expect(img, CL + 10, data, sizeof data, "with a bitmap cache size"));
        CHECK_OK(addcow_close(img));
    }
    /* Unknown flags: -EINVAL, *out NULL. */
    const uint32_t bad[] = {1u << 8, 1u << 31, ADDCOW_OPEN_RDWR | 1u << 9};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o = open_opts(bad[i]);
        img = SENTINEL;
        CHECKF(addcow_open_ext(meta, &o, &img) == -EINVAL, "flags %#x accepted", bad[i]);
        CHECKF(img == NULL, "flags %#x: *out not NULL after failure", bad[i]);
        CHECK_MSG("flags");
    }
    return T_PASS;
}

int case_open_ext_struct_size_small(const char *dir)
{
    char meta[PATH_MAX];
    TRY(make_overlay(dir, meta, 2 * CL, 1, 0));
    const uint32_t bad[] = {0, 1, 4, 7};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        AddCowOpenOptions o = open_opts(ADDCOW_OPEN_RDWR);
        o.struct_size = bad[i];
        AddCowImage *img = SENTINEL;
        CHECKF(addcow_open_ext(meta, &o, &img) == -EINVAL, "struct_size %u: rc %s", bad[i],
               addcow_last_error());
        CHECKF(img == NULL, "struct_size %u: *out not NULL after failure", bad[i]);
        CHECK_MSG("struct_size");
    }
    return T_PASS;
}

/* `size` bytes ending where an inaccessible page starts: a read past them faults. */
struct guarded {
    uint8_t *map;
    size_t page;
};

static uint8_t *guarded_alloc(struct guarded *g, size_t size)
{
    g->page = (size_t)sysconf(_SC_PAGESIZE);
    g->map = mmap(NULL, 2 * g->page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g->map == MAP_FAILED || mprotect(g->map + g->page, g->page, PROT_NONE) != 0) {
        perror("mmap/mprotect");
        abort();
    }
    uint8_t *p = g->map + g->page - size;
    memset(p, 0, size);
    return p;
}

static void guarded_free(struct guarded *g)
{
    munmap(g->map, 2 * g->page);
}

static void put_u32(uint8_t *p, size_t off, uint32_t v)
{
    memcpy(p + off, &v, sizeof v);
}

/* An older caller's struct of 8 bytes (struct_size and flags), followed by an inaccessible
 * page: the library reads its flags and nothing past it. */
int case_open_ext_struct_size_older(const char *dir)
{
    char meta[PATH_MAX];
    TRY(make_overlay(dir, meta, 2 * CL, 1, 0));
    const size_t older = offsetof(AddCowOpenOptions, bitmap_cache_size);
    CHECK(older == 8);
    struct guarded g;
    uint8_t *p = guarded_alloc(&g, older);
    put_u32(p, offsetof(AddCowOpenOptions, struct_size), (uint32_t)older);
    put_u32(p, offsetof(AddCowOpenOptions, flags), ADDCOW_OPEN_RDWR);
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open_ext(meta, (const AddCowOpenOptions *)(void *)p, &img));
    int w = -1;
    TRY(writable(img, &w));
    CHECKF(w == 1, "the flags of an 8-byte AddCowOpenOptions were not read");
    CHECK_OK(addcow_close(img));
    guarded_free(&g);
    return T_PASS;
}

/* A newer caller's larger struct: accepted when the bytes this library does not know are
 * zero, -ENOTSUP otherwise; the library reads exactly struct_size bytes. */
int case_open_ext_struct_size_larger(const char *dir)
{
    char meta[PATH_MAX];
    TRY(make_overlay(dir, meta, 2 * CL, 1, 0));
    const size_t ours = sizeof(AddCowOpenOptions), big = ours + 16;
    struct guarded g;
    uint8_t *p = guarded_alloc(&g, big);
    put_u32(p, offsetof(AddCowOpenOptions, struct_size), (uint32_t)big);
    put_u32(p, offsetof(AddCowOpenOptions, flags), ADDCOW_OPEN_RDWR);
    const AddCowOpenOptions *o = (const AddCowOpenOptions *)(void *)p;
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open_ext(meta, o, &img));
    int w = -1;
    TRY(writable(img, &w));
    CHECK(w == 1);
    CHECK_OK(addcow_close(img));
    const size_t at[] = {ours, ours + 7, big - 1};
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        p[at[i]] = 1;
        img = SENTINEL;
        CHECKF(addcow_open_ext(meta, o, &img) == -ENOTSUP, "non-zero byte %zu of %zu accepted",
               at[i], big);
        CHECKF(img == NULL, "*out not NULL after failure");
        CHECK_MSG("AddCowOpenOptions");
        p[at[i]] = 0;
    }
    guarded_free(&g);
    return T_PASS;
}

/* ------------------------------------------------------------------ locks */

int case_lock_rdwr_excludes(const char *dir)
{
    char meta[PATH_MAX];
    TRY(make_overlay(dir, meta, 2 * CL, 1, 0));
    AddCowImage *img = NULL, *other;
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    uint8_t data[300];
    fill_pat(data, sizeof data, 5, 1000);
    CHECK_OK(addcow_pwrite(img, 1000, data, sizeof data));
    CHECK_OK(addcow_flush(img));
    /* A second read-write handle, in the same process, and a reader: both refused. */
    const uint32_t modes[] = {ADDCOW_OPEN_RDWR, 0, ADDCOW_OPEN_RDWR | ADDCOW_OPEN_NO_BACKING};
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
            other = SENTINEL;
            CHECKF(addcow_open(meta, modes[i], &other) == -EBUSY,
                   "round %d: flags %#x while open read-write: %s", round, modes[i],
                   addcow_last_error());
            CHECK(other == NULL);
            CHECK_MSG("img.add-cow");
            AddCowOpenOptions o = open_opts(modes[i]);
            other = SENTINEL;
            CHECK_RC(addcow_open_ext(meta, &o, &other), -EBUSY);
            CHECK(other == NULL);
            CHECK_MSG("img.add-cow");
        }
        /* The refused opens left the holder's locks and data alone (round 2 checks that the
         * refusals of round 1 did not release anything). */
        TRY(read_expect(img, 1000, data, sizeof data, "the holder after refused opens"));
        CHECK_OK(addcow_pwrite(img, 5000, data, sizeof data));
    }
    CHECK_OK(addcow_close(img));
    /* Closing releases the locks. */
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    TRY(read_expect(img, 1000, data, sizeof data, "reopened"));
    TRY(read_expect(img, 5000, data, sizeof data, "reopened"));
    CHECK_OK(addcow_close(img));
    return T_PASS;
}

int case_lock_readers_share(const char *dir)
{
    char meta[PATH_MAX];
    TRY(make_overlay(dir, meta, 2 * CL, 1, 0));
    AddCowImage *r1 = NULL, *r2 = NULL, *w = SENTINEL;
    CHECK_OK(addcow_open(meta, 0, &r1));
    CHECK_OK(addcow_open(meta, 0, &r2));
    CHECK_RC(addcow_open(meta, ADDCOW_OPEN_RDWR, &w), -EBUSY);
    CHECK(w == NULL);
    CHECK_MSG("img.add-cow");
    CHECK_OK(addcow_close(r1));
    w = SENTINEL;
    CHECK_RC(addcow_open(meta, ADDCOW_OPEN_RDWR, &w), -EBUSY); /* r2 still reads */
    CHECK(w == NULL);
    CHECK_OK(addcow_close(r2));
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &w));
    CHECK_OK(addcow_close(w));
    return T_PASS;
}

/* Two .add-cow files naming one image file: the image file's own locks conflict. */
int case_lock_image_file(const char *dir)
{
    char a[PATH_MAX], b[PATH_MAX];
    pj(a, dir, "a.add-cow");
    pj(b, dir, "b.add-cow");
    CHECK_OK(create_img(a, "shared-image.raw", NULL, 2 * CL));
    CHECK_OK(create_img(b, "shared-image.raw", NULL, 0));
    AddCowImage *ia = NULL, *ib = SENTINEL;
    CHECK_OK(addcow_open(a, ADDCOW_OPEN_RDWR, &ia));
    CHECK_RC(addcow_open(b, ADDCOW_OPEN_RDWR, &ib), -EBUSY);
    CHECK(ib == NULL);
    CHECK_MSG("shared-image.raw");
    ib = SENTINEL;
    CHECK_RC(addcow_open(b, 0, &ib), -EBUSY);
    CHECK(ib == NULL);
    CHECK_MSG("shared-image.raw");
    CHECK_OK(addcow_close(ia));
    CHECK_OK(addcow_open(b, ADDCOW_OPEN_RDWR, &ib));
    CHECK_OK(addcow_close(ib));
    return T_PASS;
}

/* Backing files are kept from writers at every level of the chain; overlays share them. */
int case_lock_backing_chain(const char *dir)
{
    char base[PATH_MAX], a[PATH_MAX], b[PATH_MAX], c[PATH_MAX], mid[PATH_MAX], top[PATH_MAX];
    pj(base, dir, "base.raw");
    pj(a, dir, "a.add-cow");
    pj(b, dir, "b.add-cow");
    pj(c, dir, "c.add-cow");
    pj(mid, dir, "mid.add-cow");
    pj(top, dir, "top.add-cow");
    TRY(write_pat_file(base, 2 * CL, 1));
    CHECK_OK(create_img(a, "a.raw", "base.raw", 0));
    CHECK_OK(create_img(b, "b.raw", "base.raw", 0));
    CHECK_OK(create_img(c, "base.raw", NULL, 0)); /* writes into base.raw itself */
    CHECK_OK(create_img(mid, "mid.raw", "base.raw", 0));
    AddCowCreateOptions o = create_opts("top.raw", "mid.add-cow", 0);
    o.backing_fmt = "add-cow";
    CHECK_OK(addcow_create(top, &o));

    AddCowImage *ia = NULL, *ib = NULL, *ic = SENTINEL, *it = NULL, *x = SENTINEL;
    CHECK_OK(addcow_open(a, ADDCOW_OPEN_RDWR, &ia));
    CHECK_OK(addcow_open(b, ADDCOW_OPEN_RDWR, &ib)); /* one backing file, two overlays */
    CHECK_RC(addcow_open(c, ADDCOW_OPEN_RDWR, &ic), -EBUSY);
    CHECK(ic == NULL);
    CHECK_MSG("base.raw");
    CHECK_OK(addcow_open(c, 0, &ic)); /* readers of base.raw share it */
    CHECK_OK(addcow_close(ic));
    CHECK_OK(addcow_close(ia));
    CHECK_OK(addcow_close(ib));

    /* Two levels down: top -> mid.add-cow -> base.raw. */
    CHECK_OK(addcow_open(top, ADDCOW_OPEN_RDWR | ADDCOW_OPEN_BACKING_ADDCOW, &it));
    CHECK_RC(addcow_open(mid, ADDCOW_OPEN_RDWR, &x), -EBUSY);
    CHECK(x == NULL);
    CHECK_MSG("mid.add-cow");
    x = SENTINEL;
    CHECK_RC(addcow_open(c, ADDCOW_OPEN_RDWR, &x), -EBUSY);
    CHECK(x == NULL);
    CHECK_MSG("base.raw");
    CHECK_OK(addcow_open(mid, 0, &x)); /* reading the middle layer is fine */
    CHECK_OK(addcow_close(x));
    CHECK_OK(addcow_close(it));

    /* And the other way round: base.raw open for writing keeps its overlays out. */
    CHECK_OK(addcow_open(c, ADDCOW_OPEN_RDWR, &ic));
    x = SENTINEL;
    CHECK_RC(addcow_open(a, 0, &x), -EBUSY);
    CHECK(x == NULL);
    CHECK_MSG("base.raw");
    x = SENTINEL;
    CHECK_RC(addcow_open(top, ADDCOW_OPEN_BACKING_ADDCOW, &x), -EBUSY);
    CHECK(x == NULL);
    CHECK_MSG("base.raw");
    /* Without the backing file nothing of base.raw is opened. */
    CHECK_OK(addcow_open(a, ADDCOW_OPEN_RDWR | ADDCOW_OPEN_NO_BACKING, &x));
    CHECK_OK(addcow_close(x));
    CHECK_OK(addcow_close(ic));
    return T_PASS;
}

int case_lock_force_share(const char *dir)
{
    char meta[PATH_MAX];
    TRY(make_overlay(dir, meta, 2 * CL, 1, 0));
    AddCowImage *w = NULL, *peek = NULL, *x = SENTINEL;
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &w));
    uint8_t data[200];
    fill_pat(data, sizeof data, 3, CL + 7);
    CHECK_OK(addcow_pwrite(w, CL + 7, data, sizeof data));
    CHECK_OK(addcow_flush(w));
    /* Read-only with force share: no conflict with the writer; it sees what was flushed. */
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_FORCE_SHARE, &peek));
    TRY(read_expect(peek, CL + 7, data, sizeof data, "force-share peek"));
    int wr = -1;
    TRY(writable(peek, &wr));
    CHECK(wr == 0);
    CHECK_OK(addcow_close(peek));
    AddCowOpenOptions o = open_opts(ADDCOW_OPEN_FORCE_SHARE);
    CHECK_OK(addcow_open_ext(meta, &o, &peek));
    TRY(read_expect(peek, CL + 7, data, sizeof data, "force-share peek (open_ext)"));
    /* Force share is for readers only. */
    CHECK_RC(addcow_open(meta, ADDCOW_OPEN_RDWR | ADDCOW_OPEN_FORCE_SHARE, &x), -EINVAL);
    CHECK(x == NULL);
    CHECK_MSG("force share");
    o = open_opts(ADDCOW_OPEN_RDWR | ADDCOW_OPEN_FORCE_SHARE);
    x = SENTINEL;
    CHECK_RC(addcow_open_ext(meta, &o, &x), -EINVAL);
    CHECK(x == NULL);
    CHECK_OK(addcow_close(w));
    /* A force-share reader does not keep a writer out either. */
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &w));
    CHECK_OK(addcow_close(w));
    CHECK_OK(addcow_close(peek));
    return T_PASS;
}

/* create refuses to replace an `.add-cow` file in use or to resize an image file in use, and
 * leaves everything as it was. */
int case_lock_create_busy(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX], other[PATH_MAX], new_raw[PATH_MAX];
    TRY(make_overlay(dir, meta, 2 * CL, 1, 0));
    pj(raw, dir, "img.raw");
    pj(other, dir, "other.add-cow");
    pj(new_raw, dir, "new.raw");
    const uint32_t modes[] = {ADDCOW_OPEN_RDWR, 0};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        AddCowImage *img = NULL;
        CHECK_OK(addcow_open(meta, modes[i], &img));
        size_t before_len;
        uint8_t *before = read_whole(meta, &before_len);
        CHECK(before != NULL);
        CHECKF(create_img(meta, "new.raw", NULL, CL) == -EBUSY,
               "replacing an .add-cow file open with flags %#x: %s", modes[i],
               addcow_last_error());
        CHECK_MSG("img.add-cow");
        CHECK(file_len(new_raw) == -ENOENT); /* what it created is gone */
        size_t after_len;
        uint8_t *after = read_whole(meta, &after_len);
        CHECK(after != NULL && after_len == before_len);
        TRY(cmp_bytes(after, before, after_len, 0, "the .add-cow file in use"));
        free(before);
        free(after);
        /* Resizing the image file in use. */
        CHECKF(create_img(other, "img.raw", NULL, 5 * CL) == -EBUSY,
               "resizing an image file open with flags %#x: %s", modes[i], addcow_last_error());
        CHECK_MSG("img.raw");
        CHECK_RC(file_len(raw), 2 * CL);
        CHECK(file_len(other) == -ENOENT);
        CHECK_RC(addcow_get_length(img), 2 * CL);
        uint8_t *want = xmalloc(2 * CL);
        fill_pat(want, 2 * CL, 1, 0);
        TRY(read_expect(img, 0, want, 2 * CL, "the image in use"));
        free(want);
        CHECK_OK(addcow_close(img));
    }
    /* Not in use any more: both go through. */
    CHECK_OK(create_img(other, "img.raw", NULL, 5 * CL));
    CHECK_RC(file_len(raw), 5 * CL);
    CHECK_OK(create_img(meta, "new.raw", NULL, CL));
    CHECK_RC(file_len(new_raw), CL);
    return T_PASS;
}

/* A host AddCowIo over file descriptors the test opened itself. */
struct fdio {
    int fd;
};

static int fd_preadv(void *opaque, uint64_t off, const struct iovec *iov, int iovcnt)
{
    struct fdio *f = opaque;
    for (int i = 0; i < iovcnt; i++) {
        uint8_t *p = iov[i].iov_base;
        size_t n = iov[i].iov_len;
        while (n > 0) {
            ssize_t r = pread(f->fd, p, n, (off_t)off);
            if (r < 0)
                return -errno;
            if (r == 0) {
                memset(p, 0, n);
                off += n;
                break;
            }
            p += r;
            n -= (size_t)r;
            off += (uint64_t)r;
        }
    }
    return 0;
}

static int fd_pwritev(void *opaque, uint64_t off, const struct iovec *iov, int iovcnt)
{
    struct fdio *f = opaque;
    for (int i = 0; i < iovcnt; i++) {
        const uint8_t *p = iov[i].iov_base;
        size_t n = iov[i].iov_len;
        while (n > 0) {
            ssize_t r = pwrite(f->fd, p, n, (off_t)off);
            if (r <= 0)
                return r < 0 ? -errno : -EIO;
            p += r;
            n -= (size_t)r;
            off += (uint64_t)r;
        }
    }
    return 0;
}

static int fd_flush(void *opaque)
{
    struct fdio *f = opaque;
    return fsync(f->fd) == 0 ? 0 : -errno;
}

static int64_t fd_get_length(void *opaque)
{
    struct fdio *f = opaque;
    struct stat st;
    return fstat(f->fd, &st) == 0 ? (int64_t)st.st_size : -errno;
}

static int fd_truncate(void *opaque, uint64_t size)
{
    struct fdio *f = opaque;
    return ftruncate(f->fd, (off_t)size) == 0 ? 0 : -errno;
}

static AddCowIo fd_io(struct fdio *f)
{
    AddCowIo io = {f, fd_preadv, fd_pwritev, fd_flush, fd_get_length, fd_truncate};
    return io;
}

/* The host owns its files: addcow_open_io locks nothing and looks at no lock. */
int case_lock_open_io_locks_nothing(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX], base[PATH_MAX];
    TRY(make_overlay(dir, meta, 2 * CL, 1, 0));
    pj(raw, dir, "img.raw");
    pj(base, dir, "base.raw");
    struct fdio fm = {open(meta, O_RDWR | O_CLOEXEC)}, fi = {open(raw, O_RDWR | O_CLOEXEC)},
                fb = {open(base, O_RDONLY | O_CLOEXEC)};
    CHECK(fm.fd >= 0 && fi.fd >= 0 && fb.fd >= 0);
    AddCowIo mio = fd_io(&fm), iio = fd_io(&fi), bio = fd_io(&fb);
    AddCowImage *host = NULL, *img = NULL, *x = SENTINEL;
    CHECK_OK(addcow_open_io(&mio, &iio, &bio, ADDCOW_OPEN_RDWR, &host));
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img)); /* no conflict: nothing is locked */
    CHECK_OK(addcow_close(img));
    CHECK_OK(addcow_close(host));
    /* The other way round: a path open holds its locks (a second one is refused) ... */
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    CHECK_RC(addcow_open(meta, 0, &x), -EBUSY);
    CHECK(x == NULL);
    /* ... but host I/O does not look at locks. */
    CHECK_OK(addcow_open_io(&mio, &iio, &bio, ADDCOW_OPEN_RDWR, &host));
    CHECK_OK(addcow_close(host));
    AddCowOpenOptions o = open_opts(ADDCOW_OPEN_RDWR);
    CHECK_OK(addcow_open_io_ext(&mio, &iio, &bio, &o, &host));
    CHECK_OK(addcow_close(host));
    CHECK_OK(addcow_close(img));
    close(fm.fd);
    close(fi.fd);
    close(fb.fd);
    return T_PASS;
}

/* ------------------------------------------------------------------ confinement */

/* The .add-cow file is in <dir>/d; <dir>/outside.raw is outside d. */
struct confine_dirs {
    char top[PATH_MAX], d[PATH_MAX], meta[PATH_MAX], outside[PATH_MAX], inside[PATH_MAX];
};

static int confine_setup(const char *dir, struct confine_dirs *c)
{
    CHECK(realpath(dir, c->top) != NULL); /* absolute names in headers */
    pj(c->d, c->top, "d");
    CHECK(mkdir(c->d, 0755) == 0);
    pj(c->meta, c->d, "img.add-cow");
    pj(c->outside, c->top, "outside.raw");
    pj(c->inside, c->d, "img.raw");
    TRY(write_pat_file(c->outside, 2 * CL, 7));
    TRY(write_pat_file(c->inside, 2 * CL, 8));
    char link[PATH_MAX];
    pj(link, c->d, "link.raw");
    CHECK(symlink("../outside.raw", link) == 0);
    pj(link, c->d, "up");
    CHECK(symlink("..", link) == 0);
    pj(link, c->d, "abs-link.raw");
    CHECK(symlink(c->outside, link) == 0);
    return T_PASS;
}

/* Under ADDCOW_OPEN_CONFINE, -EACCES for a header naming `image` and `backing`, which opens
 * without it. */
static int refused_confined(struct confine_dirs *c, const char *image, const char *backing,
                            const char *named)
{
    TRY(write_meta(c->meta, image, backing, 2 * CL));
    AddCowImage *img = NULL;
    CHECKF(addcow_open(c->meta, 0, &img) == 0, "without confinement, image '%s', backing '%s': %s",
           image, backing ? backing : "(none)", addcow_last_error());
    CHECK_OK(addcow_close(img));
    const uint32_t modes[] = {ADDCOW_OPEN_CONFINE, ADDCOW_OPEN_CONFINE | ADDCOW_OPEN_RDWR,
                              ADDCOW_OPEN_CONFINE | ADDCOW_OPEN_FORCE_SHARE};
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        img = SENTINEL;
        int rc = addcow_open(c->meta, modes[m], &img);
        CHECKF(rc == -EACCES, "image '%s', backing '%s', flags %#x: %d (%s) %s", image,
               backing ? backing : "(none)", modes[m], rc, errname(rc), addcow_last_error());
        CHECK(img == NULL);
        CHECK_MSG(named);
    }
    AddCowOpenOptions o = open_opts(ADDCOW_OPEN_CONFINE);
    img = SENTINEL;
    CHECK_RC(addcow_open_ext(c->meta, &o, &img), -EACCES);
    CHECK(img == NULL);
    return T_PASS;
}

/* Every name that leaves d -- absolute (even one pointing inside), "..", a symlink out, a
 * symlink to ".." -- as the image file and as the backing file. */
int case_confine_open_escapes(const char *dir)
{
    struct confine_dirs c;
    TRY(confine_setup(dir, &c));
    const char *images[] = {c.outside, c.inside, "../outside.raw", "link.raw",
                            "abs-link.raw", "up/outside.raw", "up/d/img.raw"};
    for (size_t i = 0; i < sizeof images / sizeof images[0]; i++)
        TRY(refused_confined(&c, images[i], NULL, images[i]));
    const char *backings[] = {c.outside, "../outside.raw", "link.raw", "abs-link.raw",
                              "up/outside.raw"};
    for (size_t i = 0; i < sizeof backings / sizeof backings[0]; i++)
        TRY(refused_confined(&c, "img.raw", backings[i], backings[i]));
    return T_PASS;
}

/* Names that stay beneath the directory open under confinement, read-write too. */
int case_confine_open_beneath(const char *dir)
{
    struct confine_dirs c;
    TRY(confine_setup(dir, &c));
    char sub[PATH_MAX], base[PATH_MAX];
    pj(sub, c.d, "sub");
    CHECK(mkdir(sub, 0755) == 0);
    pj(base, sub, "base.raw");
    TRY(write_pat_file(base, 2 * CL, 1));
    const char *images[] = {"img.raw", "./img.raw", "sub/new.raw"};
    const char *backings[] = {"sub/base.raw", "./sub/base.raw", "sub/./base.raw"};
    for (size_t i = 0; i < 3; i++) {
        CHECK_OK(create_img(c.meta, images[i], backings[i], 2 * CL));
        AddCowImage *img = NULL;
        CHECKF(addcow_open(c.meta, ADDCOW_OPEN_CONFINE | ADDCOW_OPEN_RDWR, &img) == 0,
               "image '%s', backing '%s': %s", images[i], backings[i], addcow_last_error());
        uint8_t *want = xmalloc(2 * CL);
        fill_pat(want, 2 * CL, 1, 0);
        TRY(read_expect(img, 0, want, 2 * CL, "confined, beneath"));
        CHECK_OK(addcow_pwrite(img, 0, want, 1));
        free(want);
        CHECK_OK(addcow_close(img));
    }
    return T_PASS;
}

/* Each level's names must stay beneath the directory of the .add-cow file naming them:
 * top.add-cow -> sub/mid.add-cow -> sub/base.raw. "../base.raw" or "../other.raw" named by
 * sub/mid.add-cow are beneath top's directory but leave sub. */
int case_confine_chain_levels(const char *dir)
{
    char top[PATH_MAX], sub[PATH_MAX], mid[PATH_MAX], base[PATH_MAX], path[PATH_MAX];
    pj(top, dir, "top.add-cow");
    pj(sub, dir, "sub");
    CHECK(mkdir(sub, 0755) == 0);
    pj(mid, sub, "mid.add-cow");
    pj(base, sub, "base.raw");
    TRY(write_pat_file(base, 2 * CL, 1));
    pj(path, dir, "base.raw");
    TRY(write_pat_file(path, 2 * CL, 2));
    pj(path, dir, "other.raw");
    TRY(write_pat_file(path, 2 * CL, 3));
    CHECK_OK(create_img(mid, "mid.raw", "base.raw", 0));
    AddCowCreateOptions o = create_opts("top.raw", "sub/mid.add-cow", 0);
    o.backing_fmt = "add-cow";
    CHECK_OK(addcow_create(top, &o));
    const uint32_t fl = ADDCOW_OPEN_BACKING_ADDCOW | ADDCOW_OPEN_CONFINE;
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(top, fl, &img));
    uint8_t *want = xmalloc(2 * CL);
    fill_pat(want, 2 * CL, 1, 0);
    TRY(read_expect(img, 0, want, 2 * CL, "confined chain"));
    CHECK_OK(addcow_close(img));
    free(want);
    const char *names[][2] = {{"mid.raw", "../base.raw"}, {"../other.raw", "base.raw"}};
    for (int i = 0; i < 2; i++) {
        TRY(write_meta(mid, names[i][0], names[i][1], 2 * CL));
        CHECKF(addcow_open(top, ADDCOW_OPEN_BACKING_ADDCOW, &img) == 0, "unconfined: %s",
               addcow_last_error());
        CHECK_OK(addcow_close(img));
        img = SENTINEL;
        CHECKF(addcow_open(top, fl, &img) == -EACCES, "mid names image '%s', backing '%s': %s",
               names[i][0], names[i][1], addcow_last_error());
        CHECK(img == NULL);
        CHECK_MSG(i == 0 ? "../base.raw" : "../other.raw");
    }
    return T_PASS;
}

int case_create_confine(const char *dir)
{
    struct confine_dirs c;
    TRY(confine_setup(dir, &c));
    char base[PATH_MAX], escaped[PATH_MAX];
    pj(base, c.d, "base.raw");
    TRY(write_pat_file(base, 2 * CL, 1));
    pj(escaped, c.top, "created-outside.raw");
    const char *cases[][2] = {
        {c.outside, NULL},          {"../created-outside.raw", NULL},
        {"link.raw", NULL},         {"up/created-outside.raw", NULL},
        {"img.raw", c.outside},     {"img.raw", "../outside.raw"},
        {"img.raw", "link.raw"},    {"img.raw", "abs-link.raw"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        AddCowCreateOptions o = create_opts(cases[i][0], cases[i][1], 2 * CL);
        o.flags = ADDCOW_CREATE_CONFINE;
        int rc = addcow_create(c.meta, &o);
        CHECKF(rc == -EACCES, "image '%s', backing '%s': %d (%s) %s", cases[i][0],
               cases[i][1] ? cases[i][1] : "(none)", rc, errname(rc), addcow_last_error());
        CHECK_MSG(cases[i][1] ? cases[i][1] : cases[i][0]);
        CHECK(file_len(c.meta) == -ENOENT);
        CHECK(file_len(escaped) == -ENOENT);
        CHECK_RC(file_len(c.outside), 2 * CL); /* not resized */
    }
    /* Beneath: fine, and it then opens confined. */
    AddCowCreateOptions o = create_opts("img.raw", "base.raw", 0);
    o.flags = ADDCOW_CREATE_CONFINE;
    CHECK_OK(addcow_create(c.meta, &o));
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(c.meta, ADDCOW_OPEN_CONFINE, &img));
    CHECK_OK(addcow_close(img));
    /* The same escaping name without the flag is created as asked. */
    o = create_opts("../created-outside.raw", NULL, CL);
    CHECK_OK(addcow_create(c.meta, &o));
    CHECK_RC(file_len(escaped), CL);
    return T_PASS;
}

/* ------------------------------------------------------------------ sizes */

int case_efbig_create(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX], old[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(raw, dir, "img.raw");
    pj(old, dir, "old.raw");
    TRY(write_pat_file(old, CL, 4));
    const uint64_t sizes[] = {(uint64_t)ADDCOW_MAX_SIZE + 1, (uint64_t)ADDCOW_MAX_SIZE * 2,
                              1ull << 63, UINT64_MAX};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        CHECKF(create_img(meta, "img.raw", NULL, sizes[i]) == -EFBIG, "size %llu: %s",
               (unsigned long long)sizes[i], addcow_last_error());
        CHECK_LIMIT_MSG();
        CHECK(file_len(meta) == -ENOENT && file_len(raw) == -ENOENT);
        CHECK_RC(create_img(meta, "old.raw", NULL, sizes[i]), -EFBIG); /* existing image */
        CHECK_LIMIT_MSG();
        CHECK(file_len(meta) == -ENOENT);
        CHECK_RC(file_len(old), CL);
    }
    /* Just below the limit is not refused for its size: a small image works as before. */
    CHECK_OK(create_img(meta, "img.raw", NULL, CL));
    return T_PASS;
}

int case_efbig_truncate(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    TRY(make_overlay(dir, meta, 2 * CL, 1, 0));
    pj(raw, dir, "img.raw");
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    uint8_t data[100];
    fill_pat(data, sizeof data, 2, CL);
    CHECK_OK(addcow_pwrite(img, CL, data, sizeof data));
    const uint64_t sizes[] = {(uint64_t)ADDCOW_MAX_SIZE + 1, 1ull << 63, UINT64_MAX};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        CHECKF(addcow_truncate(img, sizes[i]) == -EFBIG, "truncate to %llu: %s",
               (unsigned long long)sizes[i], addcow_last_error());
        CHECK_LIMIT_MSG();
        CHECK_RC(addcow_get_length(img), 2 * CL);
    }
    TRY(read_expect(img, CL, data, sizeof data, "after refused truncates"));
    CHECK_OK(addcow_flush(img));
    CHECK_RC(file_len(raw), 2 * CL);
    CHECK_RC(file_len(meta), HDR + 1);
    CHECK_OK(addcow_truncate(img, 3 * CL)); /* still resizable */
    CHECK_OK(addcow_close(img));
    CHECK_RC(file_len(raw), 3 * CL);
    return T_PASS;
}

/* ------------------------------------------------------------------ special files */

/* Only regular files and block devices: anything else is -EINVAL naming its type, and a FIFO
 * must not hang (the alarm kills a hung case, which meson reports as a failure). */
int case_special_files(const char *dir)
{
    alarm(60);
    char meta[PATH_MAX], raw[PATH_MAX], fifo[PATH_MAX], sub[PATH_MAX];
    TRY(make_overlay(dir, meta, 2 * CL, 1, 0));
    pj(raw, dir, "img.raw");
    pj(fifo, dir, "pipe.add-cow");
    pj(sub, dir, "dir.raw");
    CHECK(mkfifo(fifo, 0644) == 0);
    CHECK(mkdir(sub, 0755) == 0);
    struct {
        const char *image, *backing, *type;
    } bad[] = {
        {"pipe.add-cow", "base.raw", "FIFO"},
        {"img.raw", "pipe.add-cow", "FIFO"},
        {"dir.raw", "base.raw", "directory"},
        {"img.raw", "dir.raw", "directory"},
        {"img.raw", "/dev/null", "character device"},
        {"/dev/zero", NULL, "character device"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        TRY(write_meta(meta, bad[i].image, bad[i].backing, 2 * CL));
        for (uint32_t fl = 0; fl <= ADDCOW_OPEN_RDWR; fl++) {
            AddCowImage *img = SENTINEL;
            int rc = addcow_open(meta, fl, &img);
            CHECKF(rc == -EINVAL, "image '%s', backing '%s', flags %u: %d (%s) %s",
                   bad[i].image, bad[i].backing ? bad[i].backing : "(none)", fl, rc,
                   errname(rc), addcow_last_error());
            CHECK(img == NULL);
            CHECK_MSG(bad[i].type);
        }
    }
    /* The .add-cow path itself. */
    for (uint32_t fl = 0; fl <= ADDCOW_OPEN_RDWR; fl++) {
        AddCowImage *img = SENTINEL;
        CHECK_RC(addcow_open(fifo, fl, &img), -EINVAL);
        CHECK(img == NULL);
        CHECK_MSG("FIFO");
        CHECK_RC(addcow_open(sub, fl, &img), -EINVAL);
        CHECK_MSG("directory");
    }
    /* create with a FIFO as the image file: refused, and the FIFO is left alone. */
    CHECK_RC(create_img(meta, "pipe.add-cow", NULL, 0), -EINVAL);
    CHECK_RC(create_img(meta, "pipe.add-cow", NULL, CL), -EINVAL);
    struct stat st;
    CHECK(lstat(fifo, &st) == 0 && S_ISFIFO(st.st_mode));
    alarm(0);
    return T_PASS;
}

/* addcow_header_read ("-errno as for addcow_open") refuses what addcow_open refuses. The test
 * holds the FIFO open for writing itself, so that a library opening it blocking does not hang
 * (it then fails for another reason, which the message check catches). */
int case_header_read_special_files(const char *dir)
{
    alarm(60);
    char fifo[PATH_MAX], sub[PATH_MAX];
    pj(fifo, dir, "pipe.add-cow");
    pj(sub, dir, "dir.add-cow");
    CHECK(mkfifo(fifo, 0644) == 0);
    CHECK(mkdir(sub, 0755) == 0);
    int writer = open(fifo, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    CHECK(writer >= 0);
    const char *paths[][2] = {{fifo, "FIFO"}, {sub, "directory"}, {"/dev/zero", "character device"}};
    for (size_t i = 0; i < 3; i++) {
        AddCowHeader *h = SENTINEL;
        int rc = addcow_header_read(paths[i][0], &h);
        CHECKF(rc == -EINVAL, "%s: %d (%s) %s", paths[i][0], rc, errname(rc), addcow_last_error());
        CHECK(h == NULL);
        CHECK_MSG(paths[i][1]);
    }
    close(writer);
    alarm(0);
    return T_PASS;
}
