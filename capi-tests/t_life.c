/*
 * The end of an image's life through the C ABI: addcow_get_allocation, addcow_detach,
 * addcow_commit, addcow_check (and the read-write open that refuses a short bitmap).
 * Layout 1 images of 64 KiB clusters.
 */
#include "harness.h"

#include <unistd.h>

/* Writes `seed`'s pattern over [off, off + len) of `img`, and into `expect` at the same place. */
static int put(AddCowImage *img, uint8_t *expect, uint64_t off, size_t len, uint32_t seed)
{
    fill_pat(expect + off, len, seed, off);
    CHECK_OK(addcow_pwrite(img, off, expect + off, len));
    return T_PASS;
}

int case_life_allocation(const char *dir)
{
    char meta[PATH_MAX];
    TRY(make_overlay(dir, meta, 2 * CL, 3, 4 * CL + 512));
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    uint64_t allocated = 99, total = 99;
    CHECK_RC(addcow_get_allocation(img, &allocated, &total), 0);
    CHECK(allocated == 0 && total == 5);
    uint8_t *expect = xcalloc(4 * CL + 512);
    TRY(put(img, expect, CL + 7, 100, 1));
    TRY(put(img, expect, 4 * CL, 512, 2));
    CHECK_RC(addcow_get_allocation(img, &allocated, &total), 0);
    CHECKF(allocated == 2 && total == 5, "allocated %llu of %llu",
           (unsigned long long)allocated, (unsigned long long)total);
    TRY(put(img, expect, 0, 4 * CL + 512, 3));
    CHECK_RC(addcow_get_allocation(img, &allocated, &total), 1);
    CHECK(allocated == 5);
    CHECK_RC(addcow_get_allocation(img, NULL, &total), -EINVAL);
    CHECK_RC(addcow_get_allocation(NULL, &allocated, &total), -EINVAL);
    CHECK_OK(addcow_close(img));
    free(expect);
    return T_PASS;
}

int case_life_detach(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    const uint64_t size = 3 * CL + 1024;
    TRY(make_overlay(dir, meta, 5 * CL, 4, size));
    pj(raw, dir, "img.raw");
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    uint8_t *expect = xmalloc(size);
    CHECK_OK(addcow_pread(img, 0, expect, size));
    TRY(put(img, expect, CL + 100, 200, 5));
    CHECK_OK(addcow_close(img));
    /* Two clusters still read the backing file: refused, nothing changes. */
    CHECK_RC(addcow_detach(meta, ADDCOW_DETACH_REMOVE), -EBUSY);
    CHECK_MSG("3 of 4 clusters");
    CHECK(access(meta, F_OK) == 0);
    CHECK_RC(addcow_detach(meta, 0x80), -EINVAL);
    CHECK_RC(addcow_detach(NULL, 0), -EINVAL);
    /* Allocate the rest with what it reads (a hydration), then detach. */
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    CHECK_OK(addcow_pwrite(img, 0, expect, size));
    /* In use: refused. */
    CHECK_RC(addcow_detach(meta, ADDCOW_DETACH_REMOVE), -EBUSY);
    CHECK_OK(addcow_close(img));
    CHECK_OK(addcow_detach(meta, ADDCOW_DETACH_REMOVE));
    CHECK(access(meta, F_OK) != 0 && errno == ENOENT);
    TRY(file_is(raw, expect, size, "the detached image file"));
    free(expect);
    return T_PASS;
}

int case_life_commit(const char *dir)
{
    char meta[PATH_MAX], base[PATH_MAX];
    const uint64_t size = 4 * CL;
    /* A backing file shorter than the image: the commit grows it to the image's size. */
    TRY(make_overlay(dir, meta, CL + 300, 6, size));
    pj(base, dir, "base.raw");
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    uint8_t *expect = xmalloc(size);
    CHECK_OK(addcow_pread(img, 0, expect, size));
    TRY(put(img, expect, 100, 1000, 7));
    TRY(put(img, expect, 3 * CL + 5, 10, 8));
    CHECK_OK(addcow_close(img));
    CHECK_RC(addcow_commit(meta, 0x80), -EINVAL);
    CHECK_OK(addcow_commit(meta, ADDCOW_COMMIT_EMPTY));
    TRY(file_is(base, expect, size, "the committed backing file"));
    CHECK_OK(addcow_open(meta, 0, &img));
    uint64_t allocated = 99, total = 0;
    CHECK_RC(addcow_get_allocation(img, &allocated, &total), 0);
    CHECK(allocated == 0 && total == 4);
    TRY(read_expect(img, 0, expect, size, "the emptied image"));
    CHECK_OK(addcow_close(img));
    free(expect);
    /* No backing file: nothing to commit into. */
    CHECK_OK(create_img(meta, "img.raw", NULL, size));
    CHECK_RC(addcow_commit(meta, 0), -EINVAL);
    return T_PASS;
}

/* The only finding of `r` must be of `kind`; its message must contain `word`. */
static int one_finding(AddCowCheckResult *r, int kind, const char *word)
{
    CHECK_RC(addcow_check_count(r, ADDCOW_CHECK_FINDINGS), 1);
    const char *msg = NULL;
    CHECK_RC(addcow_check_finding(r, 0, &msg), kind);
    CHECKF(msg != NULL && strstr(msg, word) != NULL, "finding: %s", msg ? msg : "(null)");
    CHECK_RC(addcow_check_finding(r, 1, &msg), -EINVAL);
    return T_PASS;
}

int case_life_check(const char *dir)
{
    char meta[PATH_MAX];
    TRY(make_overlay(dir, meta, 16 * CL, 9, 10 * CL));
    AddCowCheckResult *r = NULL;
    CHECK_RC(addcow_check(meta, 0, &r), 0);
    CHECK_RC(addcow_check_count(r, ADDCOW_CHECK_FINDINGS), 0);
    CHECK_RC(addcow_check_count(r, ADDCOW_CHECK_TOTAL_CLUSTERS), 10);
    CHECK_RC(addcow_check_count(r, ADDCOW_CHECK_ALLOCATED_CLUSTERS), 0);
    CHECK_RC(addcow_check_count(r, 99), -EINVAL);
    addcow_check_free(r);
    /* Stray bits past the last cluster (the spare bits of the second byte): a leak. */
    uint8_t stray = 0xF0;
    FILE *f = fopen(meta, "r+b");
    CHECK(f != NULL && fseek(f, (long)HDR + 1, SEEK_SET) == 0 && fwrite(&stray, 1, 1, f) == 1);
    fclose(f);
    CHECK_RC(addcow_check(meta, 0, &r), 3);
    CHECK_RC(addcow_check_count(r, ADDCOW_CHECK_LEAKS), 1);
    CHECK_RC(addcow_check_count(r, ADDCOW_CHECK_CORRUPTIONS), 0);
    TRY(one_finding(r, ADDCOW_CHECK_LEAK, "past the last cluster"));
    addcow_check_free(r);
    CHECK_RC(addcow_check(meta, ADDCOW_CHECK_REPAIR, &r), 0);
    CHECK_RC(addcow_check_count(r, ADDCOW_CHECK_LEAKS_FIXED), 1);
    TRY(one_finding(r, ADDCOW_CHECK_LEAK | ADDCOW_CHECK_REPAIRED, "past the last cluster"));
    addcow_check_free(r);
    CHECK_RC(addcow_check(meta, 0, &r), 0);
    CHECK_RC(addcow_check_count(r, ADDCOW_CHECK_FINDINGS), 0);
    addcow_check_free(r);
    /* A bad header is a corruption, not an error. */
    f = fopen(meta, "r+b");
    CHECK(f != NULL && fwrite("X", 1, 1, f) == 1);
    fclose(f);
    CHECK_RC(addcow_check(meta, ADDCOW_CHECK_REPAIR, &r), 2);
    TRY(one_finding(r, ADDCOW_CHECK_CORRUPTION, "magic"));
    addcow_check_free(r);
    /* Errors: the check could not be made. */
    char missing[PATH_MAX];
    pj(missing, dir, "missing.add-cow");
    r = (AddCowCheckResult *)1;
    CHECK_RC(addcow_check(missing, 0, &r), -ENOENT);
    CHECK(r == NULL);
    CHECK_RC(addcow_check(meta, 0x80, &r), -EINVAL);
    CHECK_RC(addcow_check(meta, 0, NULL), -EINVAL);
    addcow_check_free(NULL);
    return T_PASS;
}

int case_life_open_refuses_short_bitmap(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(raw, dir, "img.raw");
    CHECK_OK(create_img(meta, "img.raw", NULL, 8 * CL));
    /* The image file grows outside the library: 64 clusters, a bitmap of 1 byte. */
    CHECK(truncate(raw, 64 * CL) == 0);
    AddCowImage *img = NULL;
    CHECK_RC(addcow_open(meta, ADDCOW_OPEN_RDWR, &img), -EINVAL);
    CHECK_MSG("addcow_check");
    CHECK_OK(addcow_open(meta, 0, &img));
    CHECK_OK(addcow_close(img));
    AddCowCheckResult *r = NULL;
    CHECK_RC(addcow_check(meta, ADDCOW_CHECK_REPAIR, &r), 0);
    TRY(one_finding(r, ADDCOW_CHECK_CORRUPTION | ADDCOW_CHECK_REPAIRED, "no bit"));
    addcow_check_free(r);
    CHECK(file_len(meta) == (long long)(HDR + 8));
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    CHECK_OK(addcow_close(img));
    return T_PASS;
}
