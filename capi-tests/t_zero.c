/*
 * addcow_write_zeroes, addcow_discard and addcow_block_status: over files (holes punched for
 * real, seen by SEEK_DATA) and over host callbacks (no punch: zeros written, or -ENOTSUP).
 */
#include "memio.h"

#include <fcntl.h>
#include <unistd.h>

/* base.raw of `blen` bytes (seed 1) and img.add-cow of `size` bytes over it, opened rw. */
static int setup(const char *dir, uint64_t blen, uint64_t size, char *raw, AddCowImage **img)
{
    char meta[PATH_MAX];
    TRY(make_overlay(dir, meta, blen, 1, size));
    pj(raw, dir, "img.raw");
    CHECK_OK(open_img(meta, ADDCOW_OPEN_RDWR, img));
    return T_PASS;
}

/* The status of the run at `off`, which must be `want_flags` for `want_len` bytes. */
static int status_is(AddCowImage *img, uint64_t off, uint32_t want_flags, uint64_t want_len)
{
    uint64_t pnum = 7;
    uint32_t flags = 99;
    CHECK_OK(addcow_block_status(img, off, UINT64_MAX, &pnum, &flags));
    CHECKF(flags == want_flags && pnum == want_len,
           "block status at %llu: flags %#x for %llu bytes, want %#x for %llu",
           (unsigned long long)off, flags, (unsigned long long)pnum, want_flags,
           (unsigned long long)want_len);
    return T_PASS;
}

/* Bytes of the file holding data (SEEK_DATA/SEEK_HOLE). */
static long long data_bytes(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    long long total = 0;
    off_t at = 0;
    for (;;) {
        off_t d = lseek(fd, at, SEEK_DATA);
        if (d < 0)
            break;
        off_t h = lseek(fd, d, SEEK_HOLE);
        total += h - d;
        at = h;
    }
    close(fd);
    return total;
}

int case_zero_write_zeroes(const char *dir)
{
    char raw[PATH_MAX];
    AddCowImage *img = NULL;
    const uint64_t size = 6 * CL;
    TRY(setup(dir, 4 * CL, size, raw, &img));
    uint8_t *model = xcalloc(size);
    fill_pat(model, 4 * CL, 1, 0);
    uint8_t *data = xmalloc(CL);
    fill_pat(data, CL, 2, 0);
    CHECK_OK(addcow_pwrite(img, 0, data, CL));
    memcpy(model, data, CL);

    /* Half of cluster 0 (allocated: zeros written in place), clusters 1-5 whole (1-3 over the
     * backing file: allocated holes; 4-5 past its end: left alone). */
    CHECK_OK(addcow_write_zeroes(img, CL / 2, size - CL / 2, ADDCOW_ZERO_MAY_UNMAP));
    memset(model + CL / 2, 0, size - CL / 2);
    TRY(read_expect(img, 0, model, size, "after write_zeroes"));
    TRY(status_is(img, 0, ADDCOW_STATUS_ALLOCATED, CL));
    TRY(status_is(img, CL, ADDCOW_STATUS_ALLOCATED | ADDCOW_STATUS_ZERO, 3 * CL));
    TRY(status_is(img, 4 * CL, ADDCOW_STATUS_ZERO, 2 * CL));
    CHECK_OK(addcow_flush(img));
    CHECKF(data_bytes(raw) == (long long)CL, "image file holds %lld bytes of data, want %llu",
           data_bytes(raw), (unsigned long long)CL);

    /* A partial cluster over the backing file: copy-on-write with zeros, refused by
     * NO_FALLBACK before anything changes. */
    CHECK_RC(addcow_write_zeroes(img, 0, 10, ADDCOW_ZERO_NO_FALLBACK), -ENOTSUP);
    CHECK_OK(addcow_close(img));
    free(data);
    free(model);
    return T_PASS;
}

int case_zero_discard(const char *dir)
{
    char raw[PATH_MAX];
    AddCowImage *img = NULL;
    const uint64_t size = 4 * CL + 100;
    TRY(setup(dir, size, size, raw, &img));
    uint8_t *model = xcalloc(size);
    fill_pat(model, size, 1, 0);
    TRY(status_is(img, 0, ADDCOW_STATUS_BACKING, size));
    /* Clusters 1-2 whole, and the partial last cluster because the request reaches the end;
     * the parts of clusters 0 and 3 stay. */
    CHECK_OK(addcow_discard(img, 100, 2 * CL));
    CHECK_OK(addcow_discard(img, 4 * CL, 100));
    memset(model + CL, 0, CL);
    memset(model + 4 * CL, 0, 100);
    TRY(read_expect(img, 0, model, size, "after discards"));
    TRY(status_is(img, 0, ADDCOW_STATUS_BACKING, CL));
    TRY(status_is(img, CL, ADDCOW_STATUS_ALLOCATED | ADDCOW_STATUS_ZERO, CL));
    TRY(status_is(img, 2 * CL, ADDCOW_STATUS_BACKING, 2 * CL));
    TRY(status_is(img, 4 * CL, ADDCOW_STATUS_ALLOCATED | ADDCOW_STATUS_ZERO, 100));
    CHECK_OK(addcow_close(img));
    CHECKF(data_bytes(raw) == 0, "image file holds %lld bytes of data", data_bytes(raw));
    free(model);
    return T_PASS;
}

int case_zero_args(const char *dir)
{
    char raw[PATH_MAX], meta[PATH_MAX];
    AddCowImage *img = NULL;
    TRY(setup(dir, CL, 2 * CL, raw, &img));
    uint64_t pnum = 7;
    uint32_t flags = 7;
    CHECK_RC(addcow_write_zeroes(NULL, 0, CL, 0), -EINVAL);
    CHECK_RC(addcow_write_zeroes(img, 0, CL, 1u << 7), -EINVAL);
    CHECK_RC(addcow_write_zeroes(img, CL, 2 * CL, 0), -EINVAL);
    CHECK_RC(addcow_discard(NULL, 0, CL), -EINVAL);
    CHECK_RC(addcow_discard(img, UINT64_MAX, 2), -EINVAL);
    CHECK_RC(addcow_block_status(NULL, 0, CL, &pnum, &flags), -EINVAL);
    CHECK_RC(addcow_block_status(img, 0, CL, NULL, &flags), -EINVAL);
    CHECK_RC(addcow_block_status(img, 0, CL, &pnum, NULL), -EINVAL);
    CHECK_OK(addcow_block_status(img, 2 * CL, CL, &pnum, &flags));
    CHECK(pnum == 0 && flags == 0);
    CHECK_OK(addcow_write_zeroes(img, 0, 0, 0));
    CHECK_OK(addcow_discard(img, CL, 0));
    CHECK_OK(addcow_close(img));
    pj(meta, dir, "img.add-cow");
    CHECK_OK(open_img(meta, 0, &img));
    CHECK_RC(addcow_write_zeroes(img, 0, CL, ADDCOW_ZERO_MAY_UNMAP), -EPERM);
    CHECK_RC(addcow_discard(img, 0, CL), -EPERM);
    CHECK_OK(addcow_block_status(img, 0, 3, &pnum, &flags));
    CHECK(pnum == 3 && flags == ADDCOW_STATUS_BACKING);
    CHECK_OK(addcow_close(img));
    return T_PASS;
}

/* Host callbacks have no punch: write_zeroes and discard write zeros, and NO_FALLBACK gives
 * -ENOTSUP leaving the clusters unallocated. */
int case_zero_host_io_fallback(const char *dir)
{
    (void)dir;
    memfile meta, image, backing;
    mf_init(&meta, "meta", NULL);
    mf_init(&image, "image", NULL);
    mf_init(&backing, "backing", NULL);
    const uint64_t size = 3 * CL;
    mf_make_meta(&meta, "image.raw", "base.raw", size);
    mf_set_zero(&image, size);
    mf_set_pat(&backing, size, 1);
    AddCowIo mio = mf_io(&meta, 1), iio = mf_io(&image, 1), bio = mf_io(&backing, 1);
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open_io(&mio, &iio, &bio, ADDCOW_OPEN_RDWR, &img));
    CHECK_RC(addcow_write_zeroes(img, 0, CL, ADDCOW_ZERO_MAY_UNMAP | ADDCOW_ZERO_NO_FALLBACK),
             -ENOTSUP);
    TRY(status_is(img, 0, ADDCOW_STATUS_BACKING, size));
    long writes = atomic_load(&image.n_pwritev);
    CHECK_OK(addcow_write_zeroes(img, 0, CL, ADDCOW_ZERO_MAY_UNMAP));
    CHECK_OK(addcow_discard(img, CL, 2 * CL));
    CHECK(atomic_load(&image.n_pwritev) > writes);
    uint8_t *zeros = xcalloc(size);
    TRY(read_expect(img, 0, zeros, size, "zeros written"));
    /* No holes known to a host file: allocated zeros are data. */
    TRY(status_is(img, 0, ADDCOW_STATUS_ALLOCATED, size));
    CHECK_OK(addcow_close(img));
    CHECK(image.len == size && all_zero(image.data, size));
    free(zeros);
    mf_free(&meta);
    mf_free(&image);
    mf_free(&backing);
    return T_PASS;
}
