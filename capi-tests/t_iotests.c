/*
 * Equivalents of qemu-iotests 004, 017, 025, 027, 028, 037, 038, and the open modes
 * (writethrough, no backing, add-cow backing chains). Every image is opened through open_img,
 * so that `capi-tests --direct` runs them all again with ADDCOW_OPEN_DIRECT.
 */
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

/* base.raw of `blen` bytes (pattern seed 1) and img.add-cow over it of `size` bytes. */
static int setup(const char *dir, uint64_t blen, uint64_t size, char *meta, char *raw)
{
    char base[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(raw, dir, "img.raw");
    pj(base, dir, "base.raw");
    if (blen)
        TRY(write_pat_file(base, blen, 1));
    CHECK_OK(create_img(meta, "img.raw", blen ? "base.raw" : NULL, size));
    return T_PASS;
}

/* What an image over base.raw (blen bytes of seed 1) reads before any write. */
static uint8_t *base_model(uint64_t blen, uint64_t size)
{
    uint8_t *m = xcalloc(size);
    fill_pat(m, blen < size ? blen : size, 1, 0);
    return m;
}

static int pwrite_model(AddCowImage *img, uint8_t *model, uint64_t off, size_t len,
                        uint32_t seed)
{
    uint8_t *buf = xmalloc(len);
    fill_pat(buf, len, seed, off);
    int rc = addcow_pwrite(img, off, buf, len);
    CHECKF(rc == 0, "pwrite(%llu, %zu) = %d (%s): %s", (unsigned long long)off, len, rc,
           errname(rc), addcow_last_error());
    memcpy(model + off, buf, len);
    free(buf);
    return T_PASS;
}

static int reopen(AddCowImage **img, const char *meta, uint32_t flags)
{
    CHECK_OK(addcow_close(*img));
    *img = NULL;
    CHECK_OK(open_img(meta, flags, img));
    return T_PASS;
}

/* ------------------------------------------------------------------ 004: bounds */

int case_iotest_004_bounds(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    const uint64_t size = 2 * CL + 3 * SEC;
    TRY(setup(dir, 4 * CL, size, meta, raw)); /* the backing file is longer */
    uint8_t *model = base_model(4 * CL, size);
    AddCowImage *img = NULL;
    CHECK_OK(open_img(meta, ADDCOW_OPEN_RDWR, &img));
    CHECK_RC(addcow_get_length(img), size);
    /* The last sector, exactly up to the end. */
    TRY(pwrite_model(img, model, size - SEC, SEC, 2));
    uint8_t buf[2 * SEC];
    memset(buf, 0x77, sizeof buf);
    struct iovec iov[2] = {{buf, SEC}, {buf + SEC, SEC}};
    /* Straddling the end and beyond it: refused whole, nothing written. */
    const uint64_t offs[] = {size - SEC, size - 1, size, size + SEC, 4 * CL, 1ull << 50,
                             UINT64_MAX - SEC};
    for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++) {
        uint64_t o = offs[i];
        CHECKF(addcow_pwrite(img, o, buf, sizeof buf) == -EINVAL, "pwrite at %llu",
               (unsigned long long)o);
        CHECKF(addcow_writev(img, o, iov, 2) == -EINVAL, "writev at %llu",
               (unsigned long long)o);
        CHECKF(addcow_pread(img, o, buf, sizeof buf) == -EINVAL, "pread at %llu",
               (unsigned long long)o);
        CHECKF(addcow_readv(img, o, iov, 2) == -EINVAL, "readv at %llu",
               (unsigned long long)o);
        CHECK(addcow_last_error()[0] != '\0');
    }
    CHECK_RC(addcow_pread(img, size - 1, buf, 1), 0);
    CHECK(buf[0] == model[size - 1]);
    CHECK_RC(addcow_pread(img, size, buf, 0), 0);
    CHECK_RC(addcow_pwrite(img, size, buf, 0), 0);
    CHECK_RC(addcow_pread(img, size + 1, buf, 0), -EINVAL);
    /* Unchanged: size, content, allocation (only the last cluster). */
    CHECK_RC(addcow_get_length(img), size);
    TRY(read_expect(img, 0, model, size, "after refused requests"));
    uint64_t pnum = 0;
    CHECK_RC(addcow_is_allocated(img, 0, size, &pnum), 0);
    CHECK_RC(pnum, 2 * CL);
    CHECK_RC(addcow_is_allocated(img, 2 * CL, size, &pnum), 1);
    CHECK_RC(pnum, 3 * SEC);
    TRY(reopen(&img, meta, 0));
    CHECK_RC(addcow_get_length(img), size);
    TRY(read_expect(img, 0, model, size, "after reopen"));
    CHECK_OK(addcow_close(img));
    CHECK_RC(file_len(raw), size);
    free(model);
    return T_PASS;
}

/* ------------------------------------------------------------------ 017: mixed reads */

int case_iotest_017_mixed_reads(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    const uint64_t size = 5 * CL;
    TRY(setup(dir, size, size, meta, raw));
    uint8_t *model = base_model(size, size);
    AddCowImage *img = NULL;
    CHECK_OK(open_img(meta, ADDCOW_OPEN_RDWR, &img));
    TRY(pwrite_model(img, model, CL, CL, 2));                 /* cluster 1 whole */
    TRY(pwrite_model(img, model, 3 * CL + 1024, 2048, 3));    /* inside cluster 3 */
    TRY(pwrite_model(img, model, 4 * CL + CL - 7, 7, 4));     /* the last 7 bytes */
    for (int pass = 0; pass < 2; pass++) {
        TRY(read_expect(img, 0, model, size, "whole image"));
        TRY(read_expect(img, CL - 512, model + CL - 512, CL + 1024, "backing|image|backing"));
        TRY(read_expect(img, CL / 2, model + CL / 2, 3 * CL, "across four clusters"));
        for (uint64_t s = 0; s < size / SEC; s++)
            TRY(read_expect(img, s * SEC, model + s * SEC, SEC, "one sector"));
        /* Odd iovecs across every run boundary. */
        uint8_t *got = xmalloc(size);
        struct iovec iov[7];
        const size_t lens[7] = {1, 511, CL - 700, 3, CL + 1000, 2 * CL, 0};
        size_t total = 0;
        for (int i = 0; i < 7; i++) {
            iov[i].iov_base = got + total;
            iov[i].iov_len = lens[i];
            total += lens[i];
        }
        iov[6].iov_len = size - 100 - total;
        total = size - 100;
        CHECK_OK(addcow_readv(img, 100, iov, 7));
        TRY(cmp_bytes(got, model + 100, total, 100, "readv with odd iovecs"));
        free(got);
        TRY(reopen(&img, meta, 0));
    }
    CHECK_OK(addcow_close(img));
    free(model);
    return T_PASS;
}

/* ------------------------------------------------------------------ 025: resize */

static int file_sizes(const char *meta, const char *raw, uint64_t size)
{
    CHECKF(file_len(raw) == (long long)size, "image file %lld bytes, want %llu", file_len(raw),
           (unsigned long long)size);
    uint64_t ml = HDR + ((size + CL - 1) / CL + 7) / 8;
    CHECKF(file_len(meta) == (long long)ml, ".add-cow %lld bytes, want %llu", file_len(meta),
           (unsigned long long)ml);
    return T_PASS;
}

int case_iotest_025_resize(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    const uint64_t max = 9 * CL + 1;
    TRY(setup(dir, 0, 3 * CL, meta, raw));
    uint8_t *model = xcalloc(max);
    AddCowImage *img = NULL;
    CHECK_OK(open_img(meta, ADDCOW_OPEN_RDWR, &img));
    TRY(pwrite_model(img, model, 0, 3 * CL, 2));
    /* Shrink to an odd size: the rest is gone. */
    CHECK_OK(addcow_truncate(img, CL + 1000));
    CHECK_RC(addcow_get_length(img), CL + 1000);
    memset(model + CL + 1000, 0, max - CL - 1000);
    TRY(read_expect(img, 0, model, CL + 1000, "after shrinking"));
    uint8_t b[SEC];
    CHECK_RC(addcow_pread(img, CL + 1000, b, 1), -EINVAL);
    CHECK_RC(addcow_pread(img, CL + 999, b, 2), -EINVAL);
    CHECK_OK(addcow_flush(img));
    TRY(file_sizes(meta, raw, CL + 1000));
    /* Grow: the grown area reads zeros, the old bytes past the shrink do not come back. */
    CHECK_OK(addcow_truncate(img, 4 * CL));
    CHECK_RC(addcow_get_length(img), 4 * CL);
    TRY(read_expect(img, 0, model, 4 * CL, "after growing"));
    CHECK_OK(addcow_flush(img));
    TRY(file_sizes(meta, raw, 4 * CL));
    TRY(reopen(&img, meta, ADDCOW_OPEN_RDWR));
    CHECK_RC(addcow_get_length(img), 4 * CL);
    TRY(read_expect(img, 0, model, 4 * CL, "after growing and reopening"));
    /* Write into the grown area, grow past 8 clusters (a second bitmap byte). */
    TRY(pwrite_model(img, model, 3 * CL + 5, 100, 3));
    CHECK_OK(addcow_truncate(img, max));
    CHECK_RC(addcow_get_length(img), max);
    TRY(read_expect(img, 0, model, max, "after growing to 9 clusters + 1"));
    TRY(pwrite_model(img, model, max - 1, 1, 4));
    TRY(reopen(&img, meta, 0));
    TRY(file_sizes(meta, raw, max));
    TRY(read_expect(img, 0, model, max, "after reopening"));
    /* The same size: nothing happens. */
    CHECK_OK(addcow_close(img));
    CHECK_OK(open_img(meta, ADDCOW_OPEN_RDWR, &img));
    CHECK_OK(addcow_truncate(img, max));
    CHECK_OK(addcow_truncate(img, 0));
    CHECK_RC(addcow_get_length(img), 0);
    CHECK_OK(addcow_truncate(img, 2 * CL));
    memset(model, 0, max);
    TRY(read_expect(img, 0, model, 2 * CL, "after shrinking to 0 and growing"));
    CHECK_OK(addcow_close(img));
    TRY(file_sizes(meta, raw, 2 * CL));
    free(model);
    return T_PASS;
}

/* Growing over a backing file longer than the old size must not expose backing data. */
int case_iotest_025_resize_longer_backing(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    const uint64_t blen = 6 * CL + 100, s0 = 2 * CL + CL / 2, s1 = 5 * CL;
    TRY(setup(dir, blen, s0, meta, raw));
    uint8_t *model = base_model(blen, s1);
    memset(model + s0, 0, s1 - s0); /* what the grown area must read */
    AddCowImage *img = NULL;
    CHECK_OK(open_img(meta, ADDCOW_OPEN_RDWR, &img));
    TRY(pwrite_model(img, model, CL, SEC, 2)); /* cluster 1 allocated; 0 and 2 not */
    CHECK_OK(addcow_truncate(img, s1));
    CHECK_RC(addcow_get_length(img), s1);
    TRY(read_expect(img, 0, model, s1, "grown over a longer backing file"));
    /* A partial write into the grown area: the rest of that cluster stays zero. */
    TRY(pwrite_model(img, model, 4 * CL + SEC, SEC, 3));
    TRY(pwrite_model(img, model, 2 * CL + CL / 2 - 10, 20, 4)); /* across the old end */
    TRY(read_expect(img, 0, model, s1, "after writes into the grown area"));
    TRY(reopen(&img, meta, ADDCOW_OPEN_RDWR));
    TRY(read_expect(img, 0, model, s1, "after reopening"));
    /* Shrink below cluster 1's end, grow again: still zeros past the new old end. */
    CHECK_OK(addcow_truncate(img, CL + 100));
    CHECK_OK(addcow_truncate(img, 4 * CL));
    memset(model + CL + 100, 0, s1 - CL - 100);
    TRY(read_expect(img, 0, model, 4 * CL, "after shrinking and growing again"));
    TRY(reopen(&img, meta, 0));
    TRY(read_expect(img, 0, model, 4 * CL, "after reopening again"));
    CHECK_OK(addcow_close(img));
    free(model);
    return T_PASS;
}

int case_iotest_025_resize_shorter_backing(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    const uint64_t blen = CL + CL / 2 + 7, s0 = 2 * CL, s1 = 4 * CL + 3;
    TRY(setup(dir, blen, s0, meta, raw));
    uint8_t *model = base_model(blen, s1);
    AddCowImage *img = NULL;
    CHECK_OK(open_img(meta, ADDCOW_OPEN_RDWR, &img));
    CHECK_OK(addcow_truncate(img, s1));
    TRY(read_expect(img, 0, model, s1, "grown over a shorter backing file"));
    TRY(pwrite_model(img, model, 3 * CL + 10, 10, 2));
    TRY(reopen(&img, meta, 0));
    CHECK_RC(addcow_get_length(img), s1);
    TRY(read_expect(img, 0, model, s1, "after reopening"));
    CHECK_OK(addcow_close(img));
    TRY(file_sizes(meta, raw, s1));
    free(model);
    return T_PASS;
}

/* ------------------------------------------------------------------ 027: sub-cluster COW */

int case_iotest_027_subcluster_cow(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    const uint64_t size = 3 * CL;
    TRY(setup(dir, size, size, meta, raw));
    uint8_t *model = base_model(size, size);
    AddCowImage *img = NULL;
    CHECK_OK(open_img(meta, ADDCOW_OPEN_RDWR, &img));
    TRY(pwrite_model(img, model, CL + 4096, SEC, 2));
    TRY(pwrite_model(img, model, 2 * CL + 1, 3, 3));
    uint64_t pnum = 0;
    CHECK_RC(addcow_is_allocated(img, 0, size, &pnum), 0);
    CHECK_RC(pnum, CL);
    CHECK_RC(addcow_is_allocated(img, CL + 4096, size, &pnum), 1);
    CHECK_RC(pnum, 2 * CL - 4096);
    TRY(read_expect(img, 0, model, size, "through the API"));
    CHECK_OK(addcow_flush(img));
    /* The image file holds whole clusters: the write completed from the backing file. */
    uint8_t *got = xmalloc(2 * CL);
    TRY(pread_file(raw, CL, got, 2 * CL));
    TRY(cmp_bytes(got, model + CL, 2 * CL, CL, "the raw image file"));
    uint8_t bm = 0;
    TRY(pread_file(meta, HDR, &bm, 1));
    CHECKF(bm == 0x06, "bitmap byte %#x, want 0x06", bm);
    CHECK_OK(addcow_close(img));
    TRY(pread_file(raw, CL, got, 2 * CL));
    TRY(cmp_bytes(got, model + CL, 2 * CL, CL, "the raw image file after close"));
    free(got);
    free(model);
    return T_PASS;
}

/* ------------------------------------------------------------------ 028: short backing */

int case_iotest_028_short_backing(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    const uint64_t blen = CL + 12345, size = 3 * CL + 512;
    TRY(setup(dir, blen, size, meta, raw));
    uint8_t *model = base_model(blen, size);
    AddCowImage *img = NULL;
    CHECK_OK(open_img(meta, ADDCOW_OPEN_RDWR, &img));
    TRY(read_expect(img, 0, model, size, "image longer than its backing file"));
    TRY(read_expect(img, blen - 100, model + blen - 100, 200, "across the backing end"));
    TRY(read_expect(img, blen, model + blen, size - blen, "past the backing end"));
    TRY(read_expect(img, blen - 1, model + blen - 1, 1, "the backing file's last byte"));
    TRY(read_expect(img, blen, model + blen, 1, "the byte after it"));
    /* Writes near the boundary. */
    TRY(pwrite_model(img, model, blen - 100, SEC, 2));  /* across the backing end */
    TRY(pwrite_model(img, model, 2 * CL + 4096, SEC, 3)); /* all past it */
    TRY(pwrite_model(img, model, 3 * CL, 1, 4));          /* the short last cluster */
    TRY(read_expect(img, 0, model, size, "after writes near the backing end"));
    CHECK_OK(addcow_close(img));
    uint8_t *got = xmalloc(size);
    TRY(pread_file(raw, CL, got, size - CL));
    TRY(cmp_bytes(got, model + CL, size - CL, CL, "raw image clusters 1..3"));
    CHECK_OK(open_img(meta, 0, &img));
    TRY(read_expect(img, 0, model, size, "after reopening"));
    CHECK_OK(addcow_close(img));
    free(got);
    free(model);
    return T_PASS;
}

/* ------------------------------------------------------------------ 037: COW patterns */

/* Every sector s reads pat(src[s], offset). Reports the mismatching sectors. */
static int check_sectors(AddCowImage *img, const uint32_t *src, uint64_t nsec, const char *what)
{
    uint8_t *got = xmalloc(nsec * SEC);
    CHECK_OK(addcow_pread(img, 0, got, nsec * SEC));
    uint64_t bad = 0;
    for (uint64_t s = 0; s < nsec; s++) {
        for (uint64_t i = 0; i < SEC; i++) {
            if (got[s * SEC + i] != pat(src[s], s * SEC + i)) {
                if (bad < 8)
                    fprintf(stderr, "FAIL [%s] %s: sector %llu (cluster %llu) byte %llu: "
                            "not pattern %u\n", g_case, what, (unsigned long long)s,
                            (unsigned long long)(s / 128), (unsigned long long)i, src[s]);
                bad++;
                break;
            }
        }
    }
    free(got);
    CHECKF(bad == 0, "%s: %llu sectors wrong", what, (unsigned long long)bad);
    return T_PASS;
}

static int write_sectors(AddCowImage *img, uint32_t *src, uint64_t s0, uint64_t n,
                         uint32_t seed, int vectored)
{
    uint8_t *buf = xmalloc(n * SEC);
    fill_pat(buf, n * SEC, seed, s0 * SEC);
    int rc;
    if (vectored && n > 1) {
        /* one iovec per sector, the first split in two */
        struct iovec *iov = xmalloc((n + 1) * sizeof *iov);
        iov[0].iov_base = buf;
        iov[0].iov_len = 100;
        iov[1].iov_base = buf + 100;
        iov[1].iov_len = SEC - 100;
        for (uint64_t i = 1; i < n; i++) {
            iov[i + 1].iov_base = buf + i * SEC;
            iov[i + 1].iov_len = SEC;
        }
        rc = addcow_writev(img, s0 * SEC, iov, (int)n + 1);
        free(iov);
    } else {
        rc = addcow_pwrite(img, s0 * SEC, buf, n * SEC);
    }
    free(buf);
    CHECKF(rc == 0, "write of sectors [%llu, %llu) = %d: %s", (unsigned long long)s0,
           (unsigned long long)(s0 + n), rc, addcow_last_error());
    for (uint64_t i = 0; i < n; i++)
        src[s0 + i] = seed;
    return T_PASS;
}

int case_iotest_037_cow_patterns(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    const uint64_t ncl = 10, nsec = ncl * 128;
    TRY(setup(dir, ncl * CL, ncl * CL, meta, raw));
    uint32_t src[10 * 128];
    for (uint64_t s = 0; s < nsec; s++)
        src[s] = 1;
    AddCowImage *img = NULL;
    CHECK_OK(open_img(meta, ADDCOW_OPEN_RDWR, &img));
    TRY(check_sectors(img, src, nsec, "base"));
    static const struct {
        uint64_t s0, n;
        int vectored;
    } w[] = {
        {130, 4, 0},             /* one cluster, head and tail from the backing file */
        {255, 2, 1},             /* two clusters: in place + a new one */
        {385, 128, 0},           /* two new clusters, both partial */
        {5 * 128 + 64, 3 * 128 + 10, 1}, /* many clusters */
        {0, 1, 0},               /* the first sector */
        {1279, 1, 1},            /* the last sector */
        {400, 20, 1},            /* overwrite in place */
        {9 * 128 - 1, 2, 0},     /* into the last cluster, already allocated */
        {4 * 128, 128, 0},       /* a whole allocated cluster */
    };
    uint32_t seed = 10;
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) {
        TRY(write_sectors(img, src, w[i].s0, w[i].n, seed++, w[i].vectored));
        TRY(check_sectors(img, src, nsec, "after a write"));
    }
    /* Allocation: clusters 0..9 except 4 is written (cluster 4 too: 385..512 and 512..640). */
    for (uint64_t c = 0; c < ncl; c++) {
        int touched = 0;
        for (uint64_t s = c * 128; s < (c + 1) * 128; s++)
            touched |= src[s] != 1;
        uint64_t pnum;
        CHECKF(addcow_is_allocated(img, c * CL, CL, &pnum) == touched && pnum == CL,
               "cluster %llu: is_allocated != %d", (unsigned long long)c, touched);
    }
    TRY(reopen(&img, meta, 0));
    TRY(check_sectors(img, src, nsec, "after reopening"));
    CHECK_OK(addcow_close(img));
    /* The raw image file agrees sector by sector for every allocated cluster. */
    uint8_t *got = xmalloc(ncl * CL);
    TRY(pread_file(raw, 0, got, ncl * CL));
    for (uint64_t s = 0; s < nsec; s++) {
        int touched = 0;
        for (uint64_t t = s / 128 * 128; t < s / 128 * 128 + 128; t++)
            touched |= src[t] != 1;
        if (!touched)
            continue;
        for (uint64_t i = 0; i < SEC; i++)
            CHECKF(got[s * SEC + i] == pat(src[s], s * SEC + i), "raw sector %llu",
                   (unsigned long long)s);
    }
    free(got);
    return T_PASS;
}

/* ------------------------------------------------------------------ 038: concurrent COW */

struct c038 {
    AddCowImage *img;
    const uint8_t *base, *expect;
    uint64_t size;
    int t, nthreads, shift;
    pthread_barrier_t *bar;
    atomic_int *writers_left;
    int rc;
    char msg[256];
};

/* Sector s (absolute) of the region: written by which thread, or -1. */
static int owner038(uint64_t s, int shift, int nthreads)
{
    if (s < 128 || s >= 5 * 128)
        return -1;
    int64_t rel = (int64_t)(s - 128) - shift;
    if (rel < 0)
        return -1;
    int64_t k = rel / 3;
    if (rel % 3 == 2 || 3 * k + shift + 2 > 4 * 128)
        return -1;
    return (int)(k % nthreads);
}

static void *writer038(void *arg)
{
    struct c038 *w = arg;
    int nslots = (4 * 128 - w->shift - 2) / 3 + 1; /* slots whose 2 sectors fit */
    pthread_barrier_wait(w->bar);
    for (int i = 0; i < nslots; i++) {
        int k = (w->t % 2) ? nslots - 1 - i : i; /* half the threads go backwards */
        if (k % w->nthreads != w->t)
            continue;
        uint64_t off = (128 + 3 * (uint64_t)k + (uint64_t)w->shift) * SEC;
        const uint8_t *src = w->expect + off;
        int rc;
        if (k % 2) {
            struct iovec iov[2] = {{(void *)src, SEC}, {(void *)(src + SEC), SEC}};
            rc = addcow_writev(w->img, off, iov, 2);
        } else {
            rc = addcow_pwrite(w->img, off, src, 2 * SEC);
        }
        if (rc != 0 && w->rc == 0) {
            w->rc = rc;
            snprintf(w->msg, sizeof w->msg, "thread %d slot %d: %d %s", w->t, k, rc,
                     addcow_last_error());
        }
    }
    atomic_fetch_sub(w->writers_left, 1);
    return NULL;
}

static void *reader038(void *arg)
{
    struct c038 *r = arg;
    uint64_t len = 4 * CL;
    uint8_t *buf = xmalloc(len);
    pthread_barrier_wait(r->bar);
    do {
        int rc = addcow_pread(r->img, CL, buf, len);
        if (rc != 0) {
            r->rc = rc;
            snprintf(r->msg, sizeof r->msg, "reader: pread %d %s", rc, addcow_last_error());
            break;
        }
        /* Byte by byte: a read racing an in-place write of the same sector may see part of
         * it (the host's preadv and pwritev are not atomic with respect to each other). */
        for (uint64_t i = 0; i < len; i++) {
            uint64_t o = CL + i;
            if (buf[i] != r->base[o] && buf[i] != r->expect[o]) {
                r->rc = -1;
                snprintf(r->msg, sizeof r->msg,
                         "reader: byte %llu (sector %llu) reads 0x%02x, neither its old 0x%02x "
                         "nor its new 0x%02x", (unsigned long long)o,
                         (unsigned long long)(o / SEC), buf[i], r->base[o], r->expect[o]);
                break;
            }
        }
    } while (r->rc == 0 && atomic_load(r->writers_left) > 0);
    free(buf);
    return NULL;
}

int cow038_round(AddCowImage *img, const uint8_t *base, uint64_t size, int shift,
                 int nthreads, uint8_t *expect)
{
    enum { MAXT = 64, READERS = 2 };
    CHECK(nthreads <= MAXT);
    memcpy(expect, base, size);
    for (uint64_t s = 0; s < size / SEC; s++) {
        int t = owner038(s, shift, nthreads);
        if (t >= 0)
            fill_pat(expect + s * SEC, SEC, 100 + (uint32_t)t, s * SEC);
    }
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)(nthreads + READERS));
    atomic_int left;
    atomic_init(&left, nthreads);
    struct c038 w[MAXT + READERS];
    pthread_t th[MAXT + READERS];
    for (int i = 0; i < nthreads + READERS; i++) {
        w[i] = (struct c038){img, base, expect, size, i, nthreads, shift, &bar, &left, 0, ""};
        CHECK(pthread_create(&th[i], NULL, i < nthreads ? writer038 : reader038, &w[i]) == 0);
    }
    int bad = 0;
    for (int i = 0; i < nthreads + READERS; i++) {
        pthread_join(th[i], NULL);
        if (w[i].rc != 0) {
            t_fail(__FILE__, __LINE__, "shift %d: %s", shift, w[i].msg);
            bad = 1;
        }
    }
    pthread_barrier_destroy(&bar);
    CHECK(!bad);
    uint8_t *got = xmalloc(size);
    CHECK_OK(addcow_pread(img, 0, got, size));
    for (uint64_t s = 0; s < size / SEC; s++)
        CHECKF(memcmp(got + s * SEC, expect + s * SEC, SEC) == 0,
               "shift %d: after join, sector %llu (cluster %llu, writer %d) is wrong", shift,
               (unsigned long long)s, (unsigned long long)(s / 128),
               owner038(s, shift, nthreads));
    free(got);
    uint64_t pnum;
    CHECK_RC(addcow_is_allocated(img, 0, size, &pnum), 0);
    CHECK_RC(pnum, CL);
    CHECK_RC(addcow_is_allocated(img, CL, size, &pnum), 1);
    CHECK_RC(pnum, 4 * CL);
    CHECK_RC(addcow_is_allocated(img, 5 * CL, size, &pnum), 0);
    return T_PASS;
}

int case_iotest_038_concurrent_cow(const char *dir)
{
    const uint64_t size = 6 * CL;
    uint8_t *base = base_model(size, size), *expect = xmalloc(size);
    for (int round = 0; round < 9; round++) {
        char meta[PATH_MAX], raw[PATH_MAX], name[64];
        snprintf(name, sizeof name, "r%d", round);
        char sub[PATH_MAX];
        pj(sub, dir, name);
        pj(meta, dir, "img.add-cow");
        pj(raw, dir, "img.raw");
        unlink(meta);
        unlink(raw);
        if (round == 0)
            TRY(setup(dir, size, size, meta, raw));
        else
            CHECK_OK(create_img(meta, "img.raw", "base.raw", 0));
        AddCowImage *img = NULL;
        uint32_t flags = ADDCOW_OPEN_RDWR | (round % 3 == 2 ? ADDCOW_OPEN_WRITETHROUGH : 0);
        CHECK_OK(open_img(meta, flags, &img));
        int nthreads = round < 3 ? 16 : round < 6 ? 7 : 32;
        TRY(cow038_round(img, base, size, round % 3, nthreads, expect));
        TRY(reopen(&img, meta, 0));
        TRY(read_expect(img, 0, expect, size, "after reopening"));
        CHECK_OK(addcow_close(img));
        uint8_t *got = xmalloc(4 * CL);
        TRY(pread_file(raw, CL, got, 4 * CL));
        TRY(cmp_bytes(got, expect + CL, 4 * CL, CL, "raw image clusters 1..4"));
        free(got);
    }
    free(base);
    free(expect);
    return T_PASS;
}

/* ------------------------------------------------------------------ open modes */

int case_open_writethrough(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    const uint64_t size = 4 * CL;
    TRY(setup(dir, size, size, meta, raw));
    uint8_t *model = base_model(size, size);
    AddCowImage *img = NULL;
    CHECK_OK(open_img(meta, ADDCOW_OPEN_RDWR | ADDCOW_OPEN_WRITETHROUGH, &img));
    TRY(pwrite_model(img, model, CL + 300, 1000, 2)); /* allocating */
    /* No flush, no close: the data and the bit are already in the files ... */
    uint8_t *got = xmalloc(CL);
    TRY(pread_file(raw, CL, got, CL));
    TRY(cmp_bytes(got, model + CL, CL, CL, "image file after a writethrough write"));
    uint8_t bm = 0;
    TRY(pread_file(meta, HDR, &bm, 1));
    CHECKF(bm == 0x02, "bitmap byte %#x after a writethrough write, want 0x02", bm);
    /* ... so a second, independent handle sees the write (force share: it peeks while the
     * writer holds its locks). */
    AddCowImage *other = NULL;
    CHECK_OK(open_img(meta, ADDCOW_OPEN_FORCE_SHARE, &other));
    TRY(read_expect(other, 0, model, size, "a second handle"));
    CHECK_OK(addcow_close(other));
    /* In place, and across into a new cluster. */
    TRY(pwrite_model(img, model, 2 * CL - 10, 20, 3));
    TRY(pread_file(raw, CL, got, CL));
    TRY(cmp_bytes(got, model + CL, CL, CL, "image file after an in-place write"));
    TRY(pread_file(meta, HDR, &bm, 1));
    CHECKF(bm == 0x06, "bitmap byte %#x, want 0x06", bm);
    CHECK_OK(open_img(meta, ADDCOW_OPEN_FORCE_SHARE, &other));
    TRY(read_expect(other, 0, model, size, "a second handle after more writes"));
    CHECK_OK(addcow_close(other));
    /* A truncate is visible to another handle at once. */
    CHECK_OK(addcow_truncate(img, 6 * CL));
    CHECK_RC(file_len(raw), 6 * CL);
    CHECK_RC(file_len(meta), HDR + 1);
    CHECK_OK(open_img(meta, ADDCOW_OPEN_FORCE_SHARE, &other));
    CHECK_RC(addcow_get_length(other), 6 * CL);
    uint8_t *zeros = xcalloc(2 * CL);
    TRY(read_expect(other, 4 * CL, zeros, 2 * CL, "grown area, second handle"));
    CHECK_OK(addcow_close(other));
    CHECK_OK(addcow_close(img));
    CHECK_OK(open_img(meta, 0, &img));
    TRY(read_expect(img, 0, model, size, "after reopening"));
    CHECK_OK(addcow_close(img));
    free(zeros);
    free(got);
    free(model);
    return T_PASS;
}

int case_open_no_backing(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX], base[PATH_MAX];
    const uint64_t size = 4 * CL;
    TRY(setup(dir, size, size, meta, raw));
    uint8_t *model = base_model(size, size);
    AddCowImage *img = NULL;
    CHECK_OK(open_img(meta, ADDCOW_OPEN_RDWR, &img));
    TRY(pwrite_model(img, model, 2 * CL + 100, 200, 2));
    CHECK_OK(addcow_close(img));
    /* Unallocated clusters read zeros; cluster 2 reads what the image file holds. */
    uint8_t *want = xcalloc(size);
    memcpy(want + 2 * CL, model + 2 * CL, CL);
    CHECK_OK(open_img(meta, ADDCOW_OPEN_NO_BACKING, &img));
    TRY(read_expect(img, 0, want, size, "opened without its backing file"));
    uint64_t pnum;
    CHECK_RC(addcow_is_allocated(img, 0, size, &pnum), 0);
    CHECK_RC(pnum, 2 * CL);
    CHECK_RC(addcow_is_allocated(img, 2 * CL, size, &pnum), 1);
    CHECK_OK(addcow_close(img));
    /* Also when the backing file is gone. */
    pj(base, dir, "base.raw");
    CHECK(unlink(base) == 0);
    CHECK_OK(open_img(meta, ADDCOW_OPEN_NO_BACKING, &img));
    TRY(read_expect(img, 0, want, size, "backing file deleted"));
    CHECK_OK(addcow_close(img));
    free(want);
    free(model);
    return T_PASS;
}

/* top.add-cow over mid.add-cow over base.raw. */
int case_open_backing_addcow_chain(const char *dir)
{
    char base[PATH_MAX], mid[PATH_MAX], top[PATH_MAX], midraw[PATH_MAX];
    const uint64_t size = 5 * CL;
    pj(base, dir, "base.raw");
    pj(mid, dir, "mid.add-cow");
    pj(top, dir, "top.add-cow");
    pj(midraw, dir, "mid.raw");
    TRY(write_pat_file(base, size, 1));
    CHECK_OK(create_img(mid, "mid.raw", "base.raw", 0));
    uint8_t *model = base_model(size, size);
    AddCowImage *img = NULL;
    CHECK_OK(open_img(mid, ADDCOW_OPEN_RDWR, &img));
    TRY(pwrite_model(img, model, CL + 1000, 3000, 2));     /* mid cluster 1 */
    TRY(pwrite_model(img, model, 3 * CL, CL, 3));           /* mid cluster 3 whole */
    CHECK_OK(addcow_close(img));
    uint8_t *mid_model = xmalloc(size);
    memcpy(mid_model, model, size);

    AddCowCreateOptions o = create_opts("top.raw", "mid.add-cow", 0);
    o.backing_fmt = "add-cow";
    CHECK_OK(addcow_create(top, &o));
    CHECK_OK(open_img(top, ADDCOW_OPEN_RDWR | ADDCOW_OPEN_BACKING_ADDCOW, &img));
    CHECK_RC(addcow_get_length(img), size);
    TRY(read_expect(img, 0, model, size, "top over mid over base"));
    uint64_t pnum;
    CHECK_RC(addcow_is_allocated(img, 0, size, &pnum), 0); /* nothing in top yet */
    CHECK_RC(pnum, size);
    TRY(pwrite_model(img, model, 2 * CL + 5, 10, 4));       /* top cluster 2: from base */
    TRY(pwrite_model(img, model, CL + 500, 1000, 5));       /* top cluster 1: from mid */
    TRY(pwrite_model(img, model, 4 * CL - 1, 2, 6));        /* clusters 3 (mid) and 4 (base) */
    TRY(read_expect(img, 0, model, size, "after writes to top"));
    CHECK_OK(addcow_close(img));
    CHECK_OK(open_img(top, ADDCOW_OPEN_BACKING_ADDCOW, &img));
    TRY(read_expect(img, 0, model, size, "top reopened"));
    CHECK_RC(addcow_is_allocated(img, 0, size, &pnum), 0);
    CHECK_RC(pnum, CL);
    CHECK_RC(addcow_is_allocated(img, CL, size, &pnum), 1);
    CHECK_RC(pnum, 4 * CL);
    CHECK_OK(addcow_close(img));
    /* mid was only read. */
    CHECK_OK(open_img(mid, 0, &img));
    TRY(read_expect(img, 0, mid_model, size, "mid unchanged"));
    CHECK_OK(addcow_close(img));
    /* NO_BACKING wins over the chain. */
    CHECK_OK(open_img(top, ADDCOW_OPEN_BACKING_ADDCOW | ADDCOW_OPEN_NO_BACKING, &img));
    uint8_t b[4] = {1, 1, 1, 1};
    CHECK_OK(addcow_pread(img, 0, b, 4));
    CHECK(all_zero(b, 4));
    CHECK_OK(addcow_close(img));
    free(mid_model);
    free(model);
    return T_PASS;
}
