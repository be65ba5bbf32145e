/*
 * One case per function of include/addcow.h and per documented error.
 */
#include "harness.h"

#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

static int dummy_handle;
#define SENTINEL ((void *)&dummy_handle)

/* A 1-sector-aligned header buffer of layout 1. */
static void make_header(uint8_t *h, const char *image, const char *backing)
{
    memset(h, 0, HDR);
    memcpy(h, "ADD_COW\xff", 8);
    h[11] = 1;
    if (backing)
        memcpy(h + 12, backing, strlen(backing));
    memcpy(h + 1036, image, strlen(image));
}

/* ------------------------------------------------------------------ addcow_probe */

int case_probe_magic(const char *dir)
{
    (void)dir;
    uint8_t h[HDR];
    make_header(h, "img.raw", NULL);
    CHECK_RC(addcow_probe(h, 12, NULL), 100);
    CHECK_RC(addcow_probe(h, 512, "x.add-cow"), 100);
    CHECK_RC(addcow_probe(h, sizeof h, NULL), 100);
    /* Only magic and version decide: the rest may be anything. */
    uint8_t junk[512];
    memset(junk, 0xEE, sizeof junk);
    memcpy(junk, "ADD_COW\xff\0\0\0\1", 12);
    CHECK_RC(addcow_probe(junk, sizeof junk, NULL), 100);
    return T_PASS;
}

int case_probe_short(const char *dir)
{
    (void)dir;
    uint8_t h[HDR];
    make_header(h, "img.raw", NULL);
    for (size_t len = 0; len < 12; len++)
        CHECKF(addcow_probe(h, len, NULL) == 0, "probe of %zu bytes = %d", len,
               addcow_probe(h, len, NULL));
    CHECK_RC(addcow_probe(NULL, 0, NULL), 0);
    return T_PASS;
}

int case_probe_other(const char *dir)
{
    (void)dir;
    uint8_t h[HDR];
    make_header(h, "img.raw", NULL);
    h[11] = 2; /* version 2 */
    CHECK_RC(addcow_probe(h, sizeof h, NULL), 0);
    h[11] = 0;
    CHECK_RC(addcow_probe(h, sizeof h, NULL), 0);
    h[8] = 1; /* version 0x01000000 (little-endian 1) */
    CHECK_RC(addcow_probe(h, sizeof h, NULL), 0);
    make_header(h, "img.raw", NULL);
    h[7] = 0xfe; /* magic */
    CHECK_RC(addcow_probe(h, sizeof h, NULL), 0);
    uint8_t zeros[512] = {0};
    CHECK_RC(addcow_probe(zeros, sizeof zeros, NULL), 0);
    const uint8_t qcow2[12] = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 3, 0, 0, 0, 0};
    CHECK_RC(addcow_probe(qcow2, sizeof qcow2, NULL), 0);
    /* Layout 2's magic is "ACOW" (4 bytes decide); a near miss is not add-cow. */
    const uint8_t acox[12] = {'A', 'C', 'O', 'X', 0, 0, 0, 0, 0, 0, 0, 0};
    CHECK_RC(addcow_probe(acox, sizeof acox, NULL), 0);
    const uint8_t acow[12] = {'A', 'C', 'O', 'W', 0, 0, 0, 0, 0, 0, 0, 0};
    CHECK_RC(addcow_probe(acow, 3, NULL), 0);
    CHECK_RC(addcow_probe(acow, sizeof acow, NULL), 100);
    return T_PASS;
}

int case_probe_null_buf(const char *dir)
{
    (void)dir;
    CHECK_RC(addcow_probe(NULL, 1, NULL), -EINVAL);
    CHECK_RC(addcow_probe(NULL, 512, "f"), -EINVAL);
    CHECK(addcow_last_error()[0] != '\0');
    return T_PASS;
}

/* ------------------------------------------------------------------ addcow_create */

static uint64_t meta_len_for(uint64_t size)
{
    return HDR + ((size + CL - 1) / CL + 7) / 8;
}

int case_create_size_given(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(raw, dir, "img.raw");
    const uint64_t sizes[] = {1, 512, CL, CL + 1, 8 * CL, 8 * CL + 512, 100 * CL + 3};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        unlink(raw);
        CHECK_OK(create_img(meta, "img.raw", NULL, sizes[i]));
        CHECKF(file_len(raw) == (long long)sizes[i], "size %llu: image file is %lld bytes",
               (unsigned long long)sizes[i], file_len(raw));
        CHECKF(file_len(meta) == (long long)meta_len_for(sizes[i]),
               "size %llu: .add-cow is %lld bytes, want %llu", (unsigned long long)sizes[i],
               file_len(meta), (unsigned long long)meta_len_for(sizes[i]));
        AddCowImage *img = NULL;
        CHECK_OK(addcow_open(meta, 0, &img));
        CHECK(img != NULL);
        CHECK_RC(addcow_get_length(img), sizes[i]);
        uint8_t buf[600];
        size_t n = sizes[i] < sizeof buf ? (size_t)sizes[i] : sizeof buf;
        CHECK_OK(addcow_pread(img, sizes[i] - n, buf, n));
        CHECK(all_zero(buf, n));
        CHECK_OK(addcow_close(img));
    }
    return T_PASS;
}

int case_create_format_bytes(const char *dir)
{
    char meta[PATH_MAX], base[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(base, dir, "base.raw");
    TRY(write_pat_file(base, 3 * CL, 1));
    CHECK_OK(create_img(meta, "img.raw", "base.raw", 17 * CL + 5)); /* 18 clusters */
    size_t len;
    uint8_t *h = read_whole(meta, &len);
    CHECK(h != NULL);
    CHECKF(len == HDR + 3, ".add-cow is %zu bytes, want %llu", len,
           (unsigned long long)(HDR + 3));
    uint8_t want[HDR + 3];
    memset(want, 0, sizeof want);
    make_header(want, "img.raw", "base.raw");
    TRY(cmp_bytes(h, want, len, 0, "the .add-cow file"));
    free(h);
    return T_PASS;
}

int case_create_size_resizes_existing(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(raw, dir, "img.raw");
    TRY(write_pat_file(raw, 3 * CL, 9));
    CHECK_OK(create_img(meta, "img.raw", NULL, CL + 100)); /* shrinks */
    CHECK_RC(file_len(raw), CL + 100);
    CHECK_RC(file_len(meta), HDR + 1);
    CHECK_OK(create_img(meta, "img.raw", NULL, 20 * CL)); /* grows */
    CHECK_RC(file_len(raw), 20 * CL);
    CHECK_RC(file_len(meta), HDR + 3);
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, 0, &img));
    CHECK_RC(addcow_get_length(img), 20 * CL);
    CHECK_OK(addcow_close(img));
    return T_PASS;
}

int case_create_size0_existing_image(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(raw, dir, "img.raw");
    TRY(write_pat_file(raw, 2 * CL + 7, 9));
    CHECK_OK(create_img(meta, "img.raw", NULL, 0));
    CHECK_RC(file_len(raw), 2 * CL + 7);
    CHECK_RC(file_len(meta), HDR + 1);
    /* The image file's bytes are kept. */
    uint8_t buf[64], want[64];
    TRY(pread_file(raw, CL, buf, sizeof buf));
    fill_pat(want, sizeof want, 9, CL);
    TRY(cmp_bytes(buf, want, sizeof buf, CL, "existing image file"));
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, 0, &img));
    CHECK_RC(addcow_get_length(img), 2 * CL + 7);
    CHECK_OK(addcow_close(img));
    return T_PASS;
}

/* ADDCOW_CREATE_SIZE_EXACT: 0 is the size, over an existing image file, a backing file and
 * both layouts; the empty image opens, reads and writes nothing, and grows. */
int case_create_size0_exact(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX], base[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(raw, dir, "img.raw");
    pj(base, dir, "base.raw");
    TRY(write_pat_file(base, 3 * CL, 1));
    for (uint32_t layout = 1; layout <= 2; layout++) {
        for (int existing = 0; existing < 2; existing++) {
            unlink(raw);
            if (existing)
                TRY(write_pat_file(raw, 2 * CL, 9));
            AddCowCreateOptions o = create_opts("img.raw", "base.raw", 0);
            o.layout = layout;
            o.flags = ADDCOW_CREATE_SIZE_EXACT;
            CHECK_OK(addcow_create(meta, &o));
            CHECK_RC(file_len(raw), 0);
            CHECK_RC(file_len(meta), layout == 1 ? (long long)HDR : 65536);
            AddCowImage *img = NULL;
            CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
            CHECK_RC(addcow_get_length(img), 0);
            CHECK_RC(addcow_pwrite(img, 0, "x", 1), -EINVAL);
            uint64_t n = 7;
            CHECK_RC(addcow_is_allocated(img, 0, 1, &n), 0);
            CHECK(n == 0);
            CHECK_OK(addcow_truncate(img, CL));
            uint8_t want[64];
            memset(want, 0, sizeof want);
            TRY(read_expect(img, 0, want, sizeof want, "grown: zeros, never backing data"));
            CHECK_OK(addcow_close(img));
        }
    }
    /* Without the flag, 0 still takes the backing file's length. */
    unlink(raw);
    CHECK_OK(create_img(meta, "img.raw", "base.raw", 0));
    CHECK_RC(file_len(raw), 3 * CL);
    /* Without a backing file or an image file, the flag alone says how large. */
    unlink(raw);
    AddCowCreateOptions o = create_opts("img.raw", NULL, 0);
    CHECK_RC(addcow_create(meta, &o), -ENOENT);
    o.flags = ADDCOW_CREATE_SIZE_EXACT;
    CHECK_OK(addcow_create(meta, &o));
    CHECK_RC(file_len(raw), 0);
    return T_PASS;
}

int case_create_size0_from_backing(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX], base[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(raw, dir, "img.raw");
    pj(base, dir, "base.raw");
    TRY(write_pat_file(base, 3 * CL + 5, 1));
    CHECK_OK(create_img(meta, "img.raw", "base.raw", 0));
    CHECK_RC(file_len(raw), 3 * CL + 5);
    CHECK_RC(file_len(meta), HDR + 1);
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, 0, &img));
    CHECK_RC(addcow_get_length(img), 3 * CL + 5);
    uint8_t *want = xmalloc(3 * CL + 5);
    fill_pat(want, 3 * CL + 5, 1, 0);
    TRY(read_expect(img, 0, want, 3 * CL + 5, "image over its backing file"));
    free(want);
    CHECK_OK(addcow_close(img));
    return T_PASS;
}

int case_create_size0_from_addcow_backing(const char *dir)
{
    char mid[PATH_MAX], top[PATH_MAX], topraw[PATH_MAX];
    pj(mid, dir, "mid.add-cow");
    pj(top, dir, "top.add-cow");
    pj(topraw, dir, "top.raw");
    CHECK_OK(create_img(mid, "mid.raw", NULL, 5 * CL + 3));
    AddCowCreateOptions o = create_opts("top.raw", "mid.add-cow", 0);
    o.backing_fmt = "add-cow";
    CHECK_OK(addcow_create(top, &o));
    /* The virtual size of the add-cow backing, not the length of its .add-cow file. */
    CHECK_RC(file_len(topraw), 5 * CL + 3);
    CHECK_OK(create_img(top, "top2.raw", "mid.add-cow", 0)); /* backing_fmt NULL = raw */
    char top2[PATH_MAX];
    pj(top2, dir, "top2.raw");
    CHECK_RC(file_len(top2), HDR + 1); /* raw: the .add-cow file's own length */
    return T_PASS;
}

int case_create_size0_missing_image(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    /* size 0, no image file, no backing file: the image file is a missing file. */
    CHECK_RC(create_img(meta, "img.raw", NULL, 0), -ENOENT);
    CHECK(strstr(addcow_last_error(), "img.raw") != NULL);
    return T_PASS;
}

int case_create_replaces_meta(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    TRY(write_pat_file(meta, 10000, 3));
    CHECK_OK(create_img(meta, "img.raw", NULL, 3 * CL));
    CHECK_RC(file_len(meta), HDR + 1);
    size_t len;
    uint8_t *h = read_whole(meta, &len);
    CHECK(h != NULL);
    uint8_t want[HDR + 1];
    memset(want, 0, sizeof want);
    make_header(want, "img.raw", NULL);
    TRY(cmp_bytes(h, want, len, 0, "replaced .add-cow file"));
    free(h);
    return T_PASS;
}

/* The refusals happen before any file is touched. */
int case_create_refuse_image_is_meta(const char *dir)
{
    char meta[PATH_MAX], other[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    TRY(write_pat_file(meta, 5000, 3));
    CHECK_RC(create_img(meta, "img.add-cow", NULL, CL), -EINVAL);
    CHECK(addcow_last_error()[0] != '\0');
    CHECK_RC(create_img(meta, meta, NULL, CL), -EINVAL); /* absolute */
    size_t len;
    uint8_t *b = read_whole(meta, &len), want[5000];
    CHECK(b && len == 5000);
    fill_pat(want, sizeof want, 3, 0);
    TRY(cmp_bytes(b, want, len, 0, "the untouched .add-cow path"));
    free(b);
    /* Not existing yet: nothing may be created. */
    pj(other, dir, "new.add-cow");
    CHECK_RC(create_img(other, "new.add-cow", NULL, CL), -EINVAL);
    CHECK(file_len(other) == -ENOENT);
    CHECK_RC(create_img(other, "./new.add-cow", NULL, CL), -EINVAL);
    CHECK(file_len(other) == -ENOENT);
    return T_PASS;
}

int case_create_refuse_image_is_backing(const char *dir)
{
    char meta[PATH_MAX], base[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(base, dir, "base.raw");
    TRY(write_pat_file(base, 2 * CL, 1));
    CHECK_RC(create_img(meta, "base.raw", "base.raw", 0), -EINVAL);
    CHECK_RC(create_img(meta, "base.raw", "base.raw", 4 * CL), -EINVAL);
    CHECK_RC(create_img(meta, "base.raw", base, CL), -EINVAL); /* relative vs absolute */
    CHECK(file_len(meta) == -ENOENT);
    CHECK_RC(file_len(base), 2 * CL);
    uint8_t *b;
    size_t len;
    b = read_whole(base, &len);
    CHECK(b != NULL);
    uint8_t *want = xmalloc(len);
    fill_pat(want, len, 1, 0);
    TRY(cmp_bytes(b, want, len, 0, "the untouched backing file"));
    free(b);
    free(want);
    return T_PASS;
}

int case_create_refuse_long_names(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    char name[1025];
    memset(name, 'a', 1024);
    name[1024] = '\0';
    CHECK_RC(create_img(meta, name, NULL, CL), -EINVAL);
    CHECK(file_len(meta) == -ENOENT);
    CHECK_RC(create_img(meta, "img.raw", name, CL), -EINVAL);
    CHECK(file_len(meta) == -ENOENT);

    /* 1023 bytes fit: a backing name (need not exist when a size is given) ... */
    char b1023[1024];
    memset(b1023, 'b', 1023);
    b1023[1023] = '\0';
    for (int i = 100; i < 1023; i += 101)
        b1023[i] = '/';
    CHECK_OK(create_img(meta, "img.raw", b1023, CL));
    AddCowHeader *h = NULL;
    CHECK_OK(addcow_header_read(meta, &h));
    CHECK(addcow_header_backing_file(h) != NULL);
    CHECK(strcmp(addcow_header_backing_file(h), b1023) == 0);
    addcow_header_free(h);

    /* ... and an image file name of 1023 bytes, made of real directories. */
    char rel[1024] = "";
    char cur[PATH_MAX];
    snprintf(cur, sizeof cur, "%s", dir);
    for (int d = 0; d < 5; d++) {
        char comp[201];
        memset(comp, 'd', 200);
        comp[200] = '\0';
        comp[0] = (char)('0' + d);
        strcat(rel, comp);
        strcat(rel, "/");
        pj(cur, dir, rel);
        CHECK(mkdir(cur, 0755) == 0);
    }
    while (strlen(rel) < 1023)
        strcat(rel, "f");
    CHECK(strlen(rel) == 1023);
    CHECK_OK(create_img(meta, rel, NULL, 2 * CL));
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    CHECK_RC(addcow_get_length(img), 2 * CL);
    CHECK_OK(addcow_close(img));
    CHECK_OK(addcow_header_read(meta, &h));
    CHECK(strcmp(addcow_header_image_file(h), rel) == 0);
    addcow_header_free(h);
    return T_PASS;
}

int case_create_layout(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    AddCowCreateOptions o = create_opts("img.raw", NULL, CL);
    o.layout = 3;
    CHECK_RC(addcow_create(meta, &o), -ENOTSUP);
    o.layout = UINT32_MAX;
    CHECK_RC(addcow_create(meta, &o), -ENOTSUP);
    CHECK(file_len(meta) == -ENOENT);
    /* 0 is the default, layout 1. */
    const uint32_t want[] = {1, 1, 2};
    for (uint32_t l = 0; l <= 2; l++) {
        unlink(meta);
        o.layout = l;
        CHECK_OK(addcow_create(meta, &o));
        AddCowHeader *h = NULL;
        CHECK_OK(addcow_header_read(meta, &h));
        CHECKF(addcow_header_layout(h) == want[l], "layout %u created layout %u", l,
               addcow_header_layout(h));
        addcow_header_free(h);
    }
    return T_PASS;
}

int case_create_cluster_size(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    AddCowCreateOptions o = create_opts("img.raw", NULL, CL);
    const uint32_t bad[] = {1, 512, 4096, 32768, 65535, 65537, 131072, 2u << 20, UINT32_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o.cluster_size = bad[i];
        CHECKF(addcow_create(meta, &o) == -EINVAL, "cluster_size %u accepted", bad[i]);
        CHECK(file_len(meta) == -ENOENT);
    }
    o.cluster_size = 65536;
    CHECK_OK(addcow_create(meta, &o));
    o.cluster_size = 0;
    CHECK_OK(addcow_create(meta, &o));
    return T_PASS;
}

int case_create_flags(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    AddCowCreateOptions o = create_opts("img.raw", NULL, CL);
    /* Bits 0 and 1 are ADDCOW_CREATE_CONFINE and ADDCOW_CREATE_SIZE_EXACT; every other bit is
     * unknown. */
    const uint32_t bad[] = {1u << 2, 0x100, 0x80000000u, ADDCOW_CREATE_CONFINE | 1u << 3,
                            ADDCOW_CREATE_SIZE_EXACT | 1u << 4};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o.flags = bad[i];
        CHECKF(addcow_create(meta, &o) == -EINVAL, "flags %#x accepted", bad[i]);
        CHECK(file_len(meta) == -ENOENT);
    }
    return T_PASS;
}

int case_create_null_args(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    AddCowCreateOptions o = create_opts("img.raw", NULL, CL);
    CHECK_RC(addcow_create(NULL, &o), -EINVAL);
    CHECK_RC(addcow_create(meta, NULL), -EINVAL);
    o.image_file = NULL;
    CHECK_RC(addcow_create(meta, &o), -EINVAL);
    o.image_file = "";
    CHECK_RC(addcow_create(meta, &o), -EINVAL);
    CHECK(file_len(meta) == -ENOENT);
    /* backing_file and backing_fmt: NULL and "" mean none / raw. */
    o = create_opts("img.raw", "", CL);
    CHECK_OK(addcow_create(meta, &o));
    AddCowHeader *h = NULL;
    CHECK_OK(addcow_header_read(meta, &h));
    CHECK(addcow_header_backing_file(h) == NULL);
    addcow_header_free(h);
    return T_PASS;
}

int case_create_struct_size_small(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    AddCowCreateOptions o = create_opts("img.raw", NULL, CL);
    const uint32_t bad[] = {0, 1, 4, 8, (uint32_t)offsetof(AddCowCreateOptions, image_file)};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o.struct_size = bad[i];
        CHECKF(addcow_create(meta, &o) == -EINVAL, "struct_size %u: rc %d", bad[i],
               addcow_create(meta, &o));
        CHECK(file_len(meta) == -ENOENT);
    }
    return T_PASS;
}

/* An older caller's struct ending after `size`: the fields past it are not read. */
int case_create_struct_size_older(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    AddCowCreateOptions o = create_opts("img.raw", NULL, 3 * CL);
    o.struct_size = (uint32_t)offsetof(AddCowCreateOptions, cluster_size);
    o.cluster_size = 4096; /* garbage the library must not read */
    o.flags = 0xdead;
    CHECK_OK(addcow_create(meta, &o));
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, 0, &img));
    CHECK_RC(addcow_get_length(img), 3 * CL);
    CHECK_RC(addcow_get_cluster_size(img), 65536);
    CHECK_OK(addcow_close(img));
    return T_PASS;
}

int case_create_struct_size_larger(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    struct {
        AddCowCreateOptions o;
        uint64_t future[4];
    } big;
    memset(&big, 0, sizeof big);
    big.o = create_opts("img.raw", NULL, 2 * CL);
    big.o.struct_size = sizeof big;
    CHECK_OK(addcow_create(meta, &big.o));
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, 0, &img));
    CHECK_RC(addcow_get_length(img), 2 * CL);
    CHECK_OK(addcow_close(img));
    /* A newer field this library does not know, set: refused. */
    unlink(meta);
    big.future[2] = 1;
    CHECK(addcow_create(meta, &big.o) < 0);
    CHECK(file_len(meta) == -ENOENT);
    return T_PASS;
}

int case_create_bad_backing_fmt(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    AddCowCreateOptions o = create_opts("img.raw", "base.raw", CL);
    o.backing_fmt = "qcow2";
    CHECK(addcow_create(meta, &o) < 0);
    CHECK(file_len(meta) == -ENOENT);
    return T_PASS;
}

/* ------------------------------------------------------------------ addcow_open */

int case_open_enoent_meta(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "nothere.add-cow");
    AddCowImage *img = SENTINEL;
    CHECK_RC(addcow_open(meta, 0, &img), -ENOENT);
    CHECK(img == NULL);
    CHECKF(strstr(addcow_last_error(), "nothere.add-cow") != NULL, "last_error: \"%s\"",
           addcow_last_error());
    img = SENTINEL;
    CHECK_RC(addcow_open(meta, ADDCOW_OPEN_RDWR, &img), -ENOENT);
    CHECK(img == NULL);
    return T_PASS;
}

int case_open_enoent_image(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(raw, dir, "missing-image.raw");
    CHECK_OK(create_img(meta, "missing-image.raw", NULL, CL));
    CHECK(unlink(raw) == 0);
    for (uint32_t fl = 0; fl <= ADDCOW_OPEN_RDWR; fl++) {
        AddCowImage *img = SENTINEL;
        CHECK_RC(addcow_open(meta, fl, &img), -ENOENT);
        CHECK(img == NULL);
        CHECKF(strstr(addcow_last_error(), "missing-image.raw") != NULL, "last_error: \"%s\"",
               addcow_last_error());
    }
    return T_PASS;
}

int case_open_enoent_backing(const char *dir)
{
    char meta[PATH_MAX], base[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(base, dir, "gone-base.raw");
    TRY(write_pat_file(base, CL, 1));
    CHECK_OK(create_img(meta, "img.raw", "gone-base.raw", 0));
    CHECK(unlink(base) == 0);
    AddCowImage *img = SENTINEL;
    CHECK_RC(addcow_open(meta, 0, &img), -ENOENT);
    CHECK(img == NULL);
    CHECKF(strstr(addcow_last_error(), "gone-base.raw") != NULL, "last_error: \"%s\"",
           addcow_last_error());
    /* Without the backing file it opens. */
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_NO_BACKING, &img));
    CHECK(img != NULL);
    CHECK_OK(addcow_close(img));
    return T_PASS;
}

/* Opening (and, when `header_too`, reading the header of) a .add-cow file of these bytes
 * fails with `want`. */
static int open_bytes_(const char *dir, const uint8_t *h, size_t len, int want, int header_too)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    pj(meta, dir, "bad.add-cow");
    pj(raw, dir, "img.raw");
    TRY(write_pat_file(raw, CL, 5));
    TRY(write_file(meta, h, len));
    AddCowImage *img = SENTINEL;
    CHECK_RC(addcow_open(meta, 0, &img), want);
    CHECK(img == NULL);
    CHECK(addcow_last_error()[0] != '\0');
    img = SENTINEL;
    CHECK_RC(addcow_open(meta, ADDCOW_OPEN_RDWR, &img), want);
    CHECK(img == NULL);
    if (header_too) {
        AddCowHeader *hd = SENTINEL;
        CHECK_RC(addcow_header_read(meta, &hd), want);
        CHECK(hd == NULL);
    }
    return T_PASS;
}

static int open_bytes(const char *dir, const uint8_t *h, size_t len, int want)
{
    return open_bytes_(dir, h, len, want, 1);
}

int case_open_bad_magic(const char *dir)
{
    uint8_t h[HDR + 1];
    make_header(h, "img.raw", NULL);
    h[HDR] = 0;
    h[0] = 'a';
    TRY(open_bytes(dir, h, sizeof h, -EINVAL));
    make_header(h, "img.raw", NULL);
    memcpy(h, "QFI\xfb", 4);
    TRY(open_bytes(dir, h, sizeof h, -EINVAL));
    TRY(open_bytes(dir, h, 0, -EINVAL)); /* empty file */
    return T_PASS;
}

int case_open_version2(const char *dir)
{
    uint8_t h[HDR + 1];
    make_header(h, "img.raw", NULL);
    h[HDR] = 0;
    h[11] = 2;
    TRY(open_bytes(dir, h, sizeof h, -ENOTSUP));
    h[11] = 0;
    TRY(open_bytes(dir, h, sizeof h, -ENOTSUP));
    h[8] = 0x7f;
    h[11] = 1;
    TRY(open_bytes(dir, h, sizeof h, -ENOTSUP));
    return T_PASS;
}

int case_open_malformed_header(const char *dir)
{
    uint8_t h[HDR + 1];
    make_header(h, "img.raw", NULL);
    h[HDR] = 0;
    TRY(open_bytes(dir, h, 100, -EINVAL)); /* truncated header */
    TRY(open_bytes(dir, h, HDR - 1, -EINVAL));
    make_header(h, "img.raw", NULL);
    h[2100] = 1; /* reserved byte */
    TRY(open_bytes(dir, h, sizeof h, -EINVAL));
    make_header(h, "img.raw", NULL);
    h[1036 + 20] = 'x'; /* a byte after the image name's NUL */
    TRY(open_bytes(dir, h, sizeof h, -EINVAL));
    make_header(h, "img.raw", NULL);
    memset(h + 12, 'x', 1024); /* backing name without NUL */
    TRY(open_bytes(dir, h, sizeof h, -EINVAL));
    make_header(h, "", NULL); /* no image file name */
    TRY(open_bytes(dir, h, sizeof h, -EINVAL));
    return T_PASS;
}

int case_open_name_points_back(const char *dir)
{
    uint8_t h[HDR + 1];
    make_header(h, "bad.add-cow", NULL); /* the image file is the .add-cow file */
    h[HDR] = 0;
    /* (addcow_header_read resolves no names: it may accept this header.) */
    TRY(open_bytes_(dir, h, sizeof h, -EINVAL, 0));
    char meta[PATH_MAX];
    pj(meta, dir, "bad.add-cow");
    make_header(h, "img.raw", "img.raw"); /* the backing file is the image file */
    TRY(write_file(meta, h, sizeof h));
    AddCowImage *img = SENTINEL;
    CHECK_RC(addcow_open(meta, 0, &img), -EINVAL);
    CHECK(img == NULL);
    return T_PASS;
}

int case_open_unknown_flags(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    CHECK_OK(create_img(meta, "img.raw", NULL, CL));
    /* Bits 0-7 are ADDCOW_OPEN_*; the rest are unknown (bit 7 alone: copy-on-read needs
     * RDWR). */
    const uint32_t bad[] = {1u << 7, 1u << 8, 1u << 16, 1u << 31, ADDCOW_OPEN_RDWR | 1u << 8,
                            ADDCOW_OPEN_FORCE_SHARE | 1u << 8};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        AddCowImage *img = SENTINEL;
        CHECKF(addcow_open(meta, bad[i], &img) == -EINVAL, "flags %#x", bad[i]);
        CHECKF(img == NULL, "flags %#x: *out not NULL after failure", bad[i]);
    }
    return T_PASS;
}

int case_open_null_args(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    CHECK_OK(create_img(meta, "img.raw", NULL, CL));
    CHECK_RC(addcow_open(meta, 0, NULL), -EINVAL);
    AddCowImage *img = SENTINEL;
    CHECK_RC(addcow_open(NULL, 0, &img), -EINVAL);
    CHECKF(img == NULL, "addcow_open(NULL path): *out is not NULL after failure");
    return T_PASS;
}

int case_open_readonly_eperm(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX], base[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(raw, dir, "img.raw");
    pj(base, dir, "base.raw");
    TRY(write_pat_file(base, 2 * CL, 1));
    CHECK_OK(create_img(meta, "img.raw", "base.raw", 0));
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, 0, &img));
    uint8_t buf[1024];
    fill_pat(buf, sizeof buf, 7, 0);
    CHECK_RC(addcow_pwrite(img, 0, buf, sizeof buf), -EPERM);
    CHECK(addcow_last_error()[0] != '\0');
    struct iovec iov[2] = {{buf, 512}, {buf + 512, 512}};
    CHECK_RC(addcow_writev(img, CL - 512, iov, 2), -EPERM);
    CHECK_RC(addcow_truncate(img, 4 * CL), -EPERM);
    CHECK_RC(addcow_truncate(img, CL), -EPERM);
    CHECK_OK(addcow_flush(img));
    CHECK_RC(addcow_get_length(img), 2 * CL);
    uint64_t pnum = 0;
    CHECK_RC(addcow_is_allocated(img, 0, 2 * CL, &pnum), 0);
    CHECK_RC(pnum, 2 * CL);
    uint8_t *want = xmalloc(2 * CL);
    fill_pat(want, 2 * CL, 1, 0);
    TRY(read_expect(img, 0, want, 2 * CL, "read-only image"));
    free(want);
    CHECK_OK(addcow_close(img));
    CHECK_RC(file_len(raw), 2 * CL);
    CHECK_RC(file_len(meta), HDR + 1);
    return T_PASS;
}

/* ------------------------------------------------------------------ NULL handles */

int case_null_handle(const char *dir)
{
    (void)dir;
    uint8_t buf[16];
    struct iovec iov = {buf, sizeof buf};
    uint64_t pnum = 7;
    CHECK_RC(addcow_close(NULL), 0);
    CHECK_RC(addcow_get_length(NULL), -EINVAL);
    CHECK_RC(addcow_get_cluster_size(NULL), -EINVAL);
    CHECK_RC(addcow_get_backing_length(NULL), -EINVAL);
    CHECK_RC(addcow_readv(NULL, 0, &iov, 1), -EINVAL);
    CHECK_RC(addcow_writev(NULL, 0, &iov, 1), -EINVAL);
    CHECK_RC(addcow_pread(NULL, 0, buf, sizeof buf), -EINVAL);
    CHECK_RC(addcow_pwrite(NULL, 0, buf, sizeof buf), -EINVAL);
    CHECK_RC(addcow_is_allocated(NULL, 0, 1, &pnum), -EINVAL);
    CHECK_RC(addcow_truncate(NULL, CL), -EINVAL);
    CHECK_RC(addcow_flush(NULL), -EINVAL);
    CHECK(addcow_last_error()[0] != '\0');
    return T_PASS;
}

int case_close_null(const char *dir)
{
    (void)dir;
    CHECK_RC(addcow_close(NULL), 0);
    return T_PASS;
}

int case_get_length(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    CHECK_OK(create_img(meta, "img.raw", NULL, 3 * CL + 511));
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, 0, &img));
    CHECK_RC(addcow_get_length(img), 3 * CL + 511);
    CHECK_OK(addcow_close(img));
    CHECK_RC(addcow_get_length(NULL), -EINVAL);
    return T_PASS;
}

int case_get_cluster_size(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    CHECK_OK(create_img(meta, "img.raw", NULL, 3 * CL));
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    CHECK_RC(addcow_get_cluster_size(img), 65536);
    CHECK_OK(addcow_close(img));
    CHECK_RC(addcow_get_cluster_size(NULL), -EINVAL);
    return T_PASS;
}

/* ------------------------------------------------------------------ iovecs and buffers */

static int open_two_clusters(const char *dir, AddCowImage **img)
{
    char meta[PATH_MAX], base[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(base, dir, "base.raw");
    TRY(write_pat_file(base, 2 * CL, 1));
    CHECK_OK(create_img(meta, "img.raw", "base.raw", 0));
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, img));
    return T_PASS;
}

/* Nothing was written: the image still reads as its backing file, all unallocated. */
static int untouched(AddCowImage *img)
{
    uint64_t pnum = 0;
    CHECK_RC(addcow_is_allocated(img, 0, 2 * CL, &pnum), 0);
    CHECK_RC(pnum, 2 * CL);
    uint8_t *want = xmalloc(2 * CL);
    fill_pat(want, 2 * CL, 1, 0);
    TRY(read_expect(img, 0, want, 2 * CL, "untouched image"));
    free(want);
    return T_PASS;
}

int case_rw_iovcnt_bad(const char *dir)
{
    AddCowImage *img = NULL;
    TRY(open_two_clusters(dir, &img));
    uint8_t buf[8];
    enum { N = ADDCOW_IOV_MAX + 76 };
    struct iovec *iov = xcalloc(N * sizeof *iov);
    for (int i = 0; i < N; i++) {
        iov[i].iov_base = buf;
        iov[i].iov_len = 0;
    }
    iov[0].iov_len = 8;
    const int bad[] = {-1, -ADDCOW_IOV_MAX, INT_MIN, ADDCOW_IOV_MAX + 1, N};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int cnt = bad[i];
        CHECKF(addcow_readv(img, 0, iov, cnt) == -EINVAL, "readv iovcnt %d",
               cnt);
        CHECKF(addcow_writev(img, 0, iov, cnt) == -EINVAL, "writev iovcnt %d", cnt);
    }
    TRY(untouched(img));
    free(iov);
    CHECK_OK(addcow_close(img));
    return T_PASS;
}

int case_rw_null_iov(const char *dir)
{
    AddCowImage *img = NULL;
    TRY(open_two_clusters(dir, &img));
    CHECK_RC(addcow_readv(img, 0, NULL, 1), -EINVAL);
    CHECK_RC(addcow_writev(img, 0, NULL, 1), -EINVAL);
    CHECK_RC(addcow_writev(img, 0, NULL, ADDCOW_IOV_MAX), -EINVAL);
    /* An entry with a NULL base and a length. */
    uint8_t buf[512];
    memset(buf, 0x5a, sizeof buf);
    struct iovec iov[2] = {{buf, 512}, {NULL, 512}};
    CHECK_RC(addcow_readv(img, 0, iov, 2), -EINVAL);
    CHECK_RC(addcow_writev(img, 0, iov, 2), -EINVAL);
    TRY(untouched(img));
    CHECK_OK(addcow_close(img));
    return T_PASS;
}

int case_rw_iovcnt_zero(const char *dir)
{
    AddCowImage *img = NULL;
    TRY(open_two_clusters(dir, &img));
    uint8_t buf[8];
    struct iovec iov = {buf, sizeof buf};
    CHECK_RC(addcow_readv(img, 0, NULL, 0), 0);
    CHECK_RC(addcow_writev(img, 0, NULL, 0), 0);
    CHECK_RC(addcow_readv(img, CL, &iov, 0), 0);
    CHECK_RC(addcow_writev(img, CL, &iov, 0), 0);
    CHECK_RC(addcow_readv(img, 2 * CL, NULL, 0), 0); /* at the end: empty, fine */
    CHECK_RC(addcow_writev(img, 2 * CL, NULL, 0), 0);
    struct iovec empty[3] = {{buf, 0}, {NULL, 0}, {buf, 0}};
    CHECK_RC(addcow_readv(img, 100, empty, 3), 0);
    CHECK_RC(addcow_writev(img, 100, empty, 3), 0);
    CHECK_RC(addcow_pread(img, 5, buf, 0), 0);
    CHECK_RC(addcow_pwrite(img, 5, buf, 0), 0);
    CHECK_RC(addcow_pread(img, 5, NULL, 0), 0);
    CHECK_RC(addcow_pwrite(img, 5, NULL, 0), 0);
    TRY(untouched(img)); /* empty writes allocate nothing */
    CHECK_OK(addcow_close(img));
    return T_PASS;
}

int case_rw_past_end(const char *dir)
{
    AddCowImage *img = NULL;
    TRY(open_two_clusters(dir, &img));
    uint8_t buf[1024];
    memset(buf, 0x5a, sizeof buf);
    struct iovec iov[2] = {{buf, 512}, {buf + 512, 512}};
    const uint64_t offs[] = {2 * CL - 512, 2 * CL - 1, 2 * CL, 2 * CL + 512, 1ull << 40,
                             UINT64_MAX - 511, UINT64_MAX};
    for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++) {
        uint64_t o = offs[i];
        CHECKF(addcow_readv(img, o, iov, 2) == -EINVAL, "readv at %llu", (unsigned long long)o);
        CHECKF(addcow_writev(img, o, iov, 2) == -EINVAL, "writev at %llu",
               (unsigned long long)o);
        CHECKF(addcow_pread(img, o, buf, sizeof buf) == -EINVAL, "pread at %llu",
               (unsigned long long)o);
        CHECKF(addcow_pwrite(img, o, buf, sizeof buf) == -EINVAL, "pwrite at %llu",
               (unsigned long long)o);
    }
    /* Empty requests beyond the end are beyond the end too. */
    CHECK_RC(addcow_readv(img, 2 * CL + 1, NULL, 0), -EINVAL);
    CHECK_RC(addcow_pwrite(img, 2 * CL + 1, buf, 0), -EINVAL);
    TRY(untouched(img));
    CHECK_OK(addcow_close(img));
    return T_PASS;
}

int case_rw_null_buf(const char *dir)
{
    AddCowImage *img = NULL;
    TRY(open_two_clusters(dir, &img));
    CHECK_RC(addcow_pread(img, 0, NULL, 1), -EINVAL);
    CHECK_RC(addcow_pread(img, 0, NULL, 512), -EINVAL);
    CHECK_RC(addcow_pwrite(img, 0, NULL, 1), -EINVAL);
    CHECK_RC(addcow_pwrite(img, CL, NULL, CL), -EINVAL);
    CHECK(addcow_last_error()[0] != '\0');
    TRY(untouched(img));
    CHECK_OK(addcow_close(img));
    return T_PASS;
}

/* ADDCOW_IOV_MAX entries are accepted, for reads and for allocating writes. */
int case_rw_iov_max(const char *dir)
{
    AddCowImage *img = NULL;
    TRY(open_two_clusters(dir, &img));
    enum { N = ADDCOW_IOV_MAX };
    struct iovec iov[N];
    uint8_t *data = xmalloc(N * 40);
    size_t total = 0;
    for (int i = 0; i < N; i++) {
        size_t l = (size_t)(i % 7 == 3 ? 0 : 1 + (i * 13) % 61);
        iov[i].iov_base = data + total;
        iov[i].iov_len = l;
        total += l;
    }
    uint64_t off = CL - total / 2 - 3; /* crosses the two (unallocated) clusters */
    fill_pat(data, total, 42, off);
    CHECK_OK(addcow_writev(img, off, iov, N));
    uint8_t *want = xmalloc(2 * CL);
    fill_pat(want, 2 * CL, 1, 0);
    memcpy(want + off, data, total);
    TRY(read_expect(img, 0, want, 2 * CL, "after an ADDCOW_IOV_MAX-entry writev"));
    memset(data, 0, total);
    CHECK_OK(addcow_readv(img, off, iov, N));
    TRY(cmp_bytes(data, want + off, total, off, "ADDCOW_IOV_MAX-entry readv"));
    CHECK_OK(addcow_close(img));
    free(data);
    free(want);
    return T_PASS;
}

/* Iovec lengths whose total wraps around (2^63 + 2^63 + 2 = 2 modulo 2^64) or exceeds
 * SSIZE_MAX: -EINVAL before any buffer is touched. The buffers are small and valid, so a
 * library trusting the wrapped total would read or write them (and pass the range check). */
int case_rw_iov_overflow(const char *dir)
{
    if (sizeof(size_t) < 8) {
        t_note("size_t is narrower than 64 bits");
        return T_SKIP;
    }
    AddCowImage *img = NULL;
    TRY(open_two_clusters(dir, &img));
    uint8_t a[16], b[16], c[16];
    memset(a, 0x5a, sizeof a);
    memset(b, 0x5b, sizeof b);
    memset(c, 0x5c, sizeof c);
    const size_t half = (size_t)1 << 63;
    struct iovec wrap2[3] = {{a, half}, {b, half}, {c, 2}};         /* 2 */
    struct iovec wrap0[2] = {{a, SIZE_MAX}, {b, 1}};                 /* 0 */
    struct iovec wrap3[3] = {{a, 3}, {b, SIZE_MAX - 1}, {c, 2}};     /* 3 */
    struct iovec over[2] = {{a, SSIZE_MAX}, {b, 1}};                 /* SSIZE_MAX + 1 */
    struct iovec over1[1] = {{a, (size_t)SSIZE_MAX + 1}};
    struct iovec halves[3] = {{a, half / 2}, {b, 0}, {c, half / 2}}; /* SSIZE_MAX + 1 */
    const struct {
        const struct iovec *iov;
        int cnt;
        const char *what;
    } bad[] = {
        {wrap2, 3, "2^63 + 2^63 + 2"}, {wrap0, 2, "SIZE_MAX + 1"},
        {wrap3, 3, "3 + (SIZE_MAX - 1) + 2"}, {over, 2, "SSIZE_MAX + 1"},
        {over1, 1, "one entry of SSIZE_MAX + 1"}, {halves, 3, "2^62 + 0 + 2^62"},
    };
    const uint64_t offs[] = {0, CL};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        for (size_t k = 0; k < 2; k++) {
            int rc = addcow_readv(img, offs[k], bad[i].iov, bad[i].cnt);
            CHECKF(rc == -EINVAL, "readv at %llu, lengths %s: %d (%s)",
                   (unsigned long long)offs[k], bad[i].what, rc, errname(rc));
            CHECKF(strstr(addcow_last_error(), "SSIZE_MAX") != NULL,
                   "readv, lengths %s: refused for another reason: %s", bad[i].what,
                   addcow_last_error());
            rc = addcow_writev(img, offs[k], bad[i].iov, bad[i].cnt);
            CHECKF(rc == -EINVAL, "writev at %llu, lengths %s: %d (%s)",
                   (unsigned long long)offs[k], bad[i].what, rc, errname(rc));
            CHECKF(strstr(addcow_last_error(), "SSIZE_MAX") != NULL,
                   "writev, lengths %s: refused for another reason: %s", bad[i].what,
                   addcow_last_error());
        }
    }
    for (size_t i = 0; i < sizeof a; i++)
        CHECKF(a[i] == 0x5a && b[i] == 0x5b && c[i] == 0x5c, "a buffer was written at %zu", i);
    TRY(untouched(img));
    CHECK_OK(addcow_close(img));
    return T_PASS;
}

/* A plain buffer longer than SSIZE_MAX (as for pread(2)): -EINVAL, for that reason, and the
 * buffer is not touched. */
int case_rw_len_above_ssize_max(const char *dir)
{
    AddCowImage *img = NULL;
    TRY(open_two_clusters(dir, &img));
    uint8_t buf[16];
    memset(buf, 0x5a, sizeof buf);
    const size_t lens[] = {(size_t)SSIZE_MAX + 1, SIZE_MAX, SIZE_MAX - 7};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        CHECKF(addcow_pread(img, 0, buf, lens[i]) == -EINVAL, "pread of %zu bytes", lens[i]);
        CHECKF(strstr(addcow_last_error(), "SSIZE_MAX") != NULL, "pread of %zu bytes: %s",
               lens[i], addcow_last_error());
        CHECKF(addcow_pwrite(img, 0, buf, lens[i]) == -EINVAL, "pwrite of %zu bytes", lens[i]);
        CHECKF(strstr(addcow_last_error(), "SSIZE_MAX") != NULL, "pwrite of %zu bytes: %s",
               lens[i], addcow_last_error());
    }
    for (size_t i = 0; i < sizeof buf; i++)
        CHECKF(buf[i] == 0x5a, "the buffer was written at %zu", i);
    TRY(untouched(img));
    CHECK_OK(addcow_close(img));
    return T_PASS;
}

/* ------------------------------------------------------------------ addcow_is_allocated */

static int alloc_is(AddCowImage *img, uint64_t off, uint64_t bytes, int want, uint64_t wpnum)
{
    uint64_t pnum = 0xdeadbeef;
    int rc = addcow_is_allocated(img, off, bytes, &pnum);
    CHECKF(rc == want && pnum == wpnum,
           "is_allocated(%llu, %llu) = %d pnum %llu, want %d pnum %llu (%s)",
           (unsigned long long)off, (unsigned long long)bytes, rc, (unsigned long long)pnum,
           want, (unsigned long long)wpnum, rc < 0 ? addcow_last_error() : "");
    return T_PASS;
}

static int alloc_expectations(AddCowImage *img, uint64_t size)
{
    TRY(alloc_is(img, 0, size, 0, CL));
    TRY(alloc_is(img, 0, 100, 0, 100));
    TRY(alloc_is(img, 5, UINT64_MAX, 0, CL - 5));
    TRY(alloc_is(img, CL, size, 1, 2 * CL));
    TRY(alloc_is(img, CL + 100, 10, 1, 10));
    TRY(alloc_is(img, CL + 100, UINT64_MAX, 1, 2 * CL - 100));
    TRY(alloc_is(img, 3 * CL - 1, 2, 1, 1));
    TRY(alloc_is(img, 3 * CL, UINT64_MAX, 0, CL));
    TRY(alloc_is(img, 4 * CL, UINT64_MAX, 1, size - 4 * CL)); /* clamped to the end */
    TRY(alloc_is(img, size - 1, 100, 1, 1));
    TRY(alloc_is(img, size, 1, 0, 0));
    TRY(alloc_is(img, size, UINT64_MAX, 0, 0));
    TRY(alloc_is(img, size + CL, 1, 0, 0));
    TRY(alloc_is(img, UINT64_MAX, UINT64_MAX, 0, 0));
    TRY(alloc_is(img, 0, 0, 0, 0));
    TRY(alloc_is(img, CL, 0, 0, 0));
    return T_PASS;
}

int case_is_allocated(const char *dir)
{
    char meta[PATH_MAX], base[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(base, dir, "base.raw");
    const uint64_t size = 4 * CL + 1000;
    TRY(write_pat_file(base, size, 1));
    CHECK_OK(create_img(meta, "img.raw", "base.raw", 0));
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    TRY(alloc_is(img, 0, size, 0, size));
    uint8_t buf[512];
    fill_pat(buf, sizeof buf, 2, 0);
    CHECK_OK(addcow_pwrite(img, CL + 4096, buf, 1));            /* cluster 1 */
    CHECK_OK(addcow_pwrite(img, 3 * CL - 512, buf, sizeof buf)); /* cluster 2 */
    CHECK_OK(addcow_pwrite(img, size - 10, buf, 10));            /* cluster 4 (partial) */
    TRY(alloc_expectations(img, size));
    uint64_t pnum;
    CHECK_RC(addcow_is_allocated(img, 0, 1, NULL), -EINVAL);
    CHECK_RC(addcow_is_allocated(NULL, 0, 1, &pnum), -EINVAL);
    CHECK_OK(addcow_close(img));
    CHECK_OK(addcow_open(meta, 0, &img));
    TRY(alloc_expectations(img, size));
    CHECK_OK(addcow_close(img));
    return T_PASS;
}

/* ------------------------------------------------------------------ addcow_flush */

int case_flush_persists(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX], base[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(raw, dir, "img.raw");
    pj(base, dir, "base.raw");
    TRY(write_pat_file(base, 4 * CL, 1));
    CHECK_OK(create_img(meta, "img.raw", "base.raw", 0));
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    uint8_t data[3000];
    fill_pat(data, sizeof data, 2, 2 * CL + 777);
    CHECK_OK(addcow_pwrite(img, 2 * CL + 777, data, sizeof data));
    CHECK_OK(addcow_flush(img));
    /* While the image is still open: the data and then the bit are in the files. */
    uint8_t *want = xmalloc(CL), *got = xmalloc(CL);
    fill_pat(want, CL, 1, 2 * CL);
    memcpy(want + 777, data, sizeof data);
    TRY(pread_file(raw, 2 * CL, got, CL));
    TRY(cmp_bytes(got, want, CL, 2 * CL, "image file after flush"));
    uint8_t bm = 0xff;
    TRY(pread_file(meta, HDR, &bm, 1));
    CHECKF(bm == 0x04, "bitmap byte after flush: %#x, want 0x04", bm);
    /* A second handle peeks without the locks that would conflict with the writer. */
    AddCowImage *other = NULL;
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_FORCE_SHARE, &other));
    TRY(read_expect(other, 2 * CL, want, CL, "a second handle after flush"));
    CHECK_OK(addcow_close(other));
    CHECK_OK(addcow_flush(img)); /* nothing dirty: fine */
    CHECK_OK(addcow_close(img));
    free(want);
    free(got);
    return T_PASS;
}

/* ------------------------------------------------------------------ last_error, version */

int case_last_error_names_file(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "absent-image-xyz.add-cow");
    AddCowImage *img = NULL;
    CHECK_RC(addcow_open(meta, 0, &img), -ENOENT);
    const char *msg = addcow_last_error();
    CHECK(msg != NULL);
    CHECKF(strstr(msg, "absent-image-xyz.add-cow") != NULL, "last_error: \"%s\"", msg);
    /* A later success does not clear it (it is the last *failed* call's message). */
    CHECK(addcow_version() != NULL);
    CHECK_OK(create_img(meta, "img.raw", NULL, CL));
    CHECK(strstr(addcow_last_error(), "absent-image-xyz.add-cow") != NULL);
    /* The next failure replaces it. */
    CHECK_RC(addcow_get_length(NULL), -EINVAL);
    CHECK(strstr(addcow_last_error(), "absent-image-xyz.add-cow") == NULL);
    CHECK(addcow_last_error()[0] != '\0');
    return T_PASS;
}

struct le_thread {
    const char *path;
    int fresh_ok, rc, named;
};

static void *le_thread_main(void *arg)
{
    struct le_thread *t = arg;
    const char *m = addcow_last_error();
    t->fresh_ok = m != NULL && m[0] == '\0';
    AddCowImage *img = NULL;
    t->rc = addcow_open(t->path, 0, &img);
    t->named = strstr(addcow_last_error(), "thread-b-file") != NULL;
    return NULL;
}

int case_last_error_per_thread(const char *dir)
{
    char a[PATH_MAX], b[PATH_MAX];
    pj(a, dir, "thread-a-file.add-cow");
    pj(b, dir, "thread-b-file.add-cow");
    AddCowImage *img = NULL;
    CHECK_RC(addcow_open(a, 0, &img), -ENOENT);
    struct le_thread t = {b, 0, 0, 0};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, le_thread_main, &t) == 0);
    CHECK(pthread_join(th, NULL) == 0);
    CHECKF(t.fresh_ok, "a new thread's addcow_last_error() is not \"\"");
    CHECK_RC(t.rc, -ENOENT);
    CHECK(t.named);
    CHECKF(strstr(addcow_last_error(), "thread-a-file") != NULL,
           "this thread's message changed: \"%s\"", addcow_last_error());
    return T_PASS;
}

int case_version(const char *dir)
{
    (void)dir;
    const char *v = addcow_version();
    CHECK(v != NULL);
    CHECKF(strcmp(v, "0.1.0") == 0, "version \"%s\"", v);
    CHECK(addcow_version() == v);
    return T_PASS;
}

/* ------------------------------------------------------------------ headers */

int case_header_read_names(const char *dir)
{
    char meta[PATH_MAX], base[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(base, dir, "base.raw");
    TRY(write_pat_file(base, 2 * CL, 1));
    CHECK_OK(create_img(meta, "img.raw", base, 0)); /* absolute backing name */
    AddCowHeader *h = NULL;
    CHECK_OK(addcow_header_read(meta, &h));
    CHECK(h != NULL);
    CHECK_RC(addcow_header_layout(h), 1);
    CHECK_RC(addcow_header_cluster_size(h), 65536);
    CHECK(addcow_header_image_file(h) && strcmp(addcow_header_image_file(h), "img.raw") == 0);
    CHECK(addcow_header_backing_file(h) && strcmp(addcow_header_backing_file(h), base) == 0);
    addcow_header_free(h);
    CHECK_OK(create_img(meta, "./img2.raw", "base.raw", CL)); /* stored as given */
    CHECK_OK(addcow_header_read(meta, &h));
    CHECK(strcmp(addcow_header_image_file(h), "./img2.raw") == 0);
    CHECK(strcmp(addcow_header_backing_file(h), "base.raw") == 0);
    addcow_header_free(h);
    return T_PASS;
}

int case_header_read_no_backing(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    CHECK_OK(create_img(meta, "img.raw", NULL, CL));
    AddCowHeader *h = NULL;
    CHECK_OK(addcow_header_read(meta, &h));
    CHECK(addcow_header_backing_file(h) == NULL);
    CHECK(strcmp(addcow_header_image_file(h), "img.raw") == 0);
    CHECK_RC(addcow_header_layout(h), 1);
    CHECK_RC(addcow_header_cluster_size(h), 65536);
    addcow_header_free(h);
    return T_PASS;
}

/* Reading a header opens none of the files it names. */
int case_header_read_missing_files(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    uint8_t h[HDR + 1];
    make_header(h, "no-such-image.raw", "/no/such/backing.raw");
    h[HDR] = 0;
    TRY(write_file(meta, h, sizeof h));
    AddCowHeader *hd = NULL;
    CHECK_OK(addcow_header_read(meta, &hd));
    CHECK(strcmp(addcow_header_image_file(hd), "no-such-image.raw") == 0);
    CHECK(strcmp(addcow_header_backing_file(hd), "/no/such/backing.raw") == 0);
    addcow_header_free(hd);
    return T_PASS;
}

int case_header_read_errors(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "nothing.add-cow");
    AddCowHeader *h = SENTINEL;
    CHECK_RC(addcow_header_read(meta, &h), -ENOENT);
    CHECK(h == NULL);
    CHECK(strstr(addcow_last_error(), "nothing.add-cow") != NULL);
    CHECK_RC(addcow_header_read(meta, NULL), -EINVAL);
    h = SENTINEL;
    CHECK_RC(addcow_header_read(NULL, &h), -EINVAL);
    CHECKF(h == NULL, "addcow_header_read(NULL path): *out is not NULL after failure");
    return T_PASS;
}

int case_header_null_accessors(const char *dir)
{
    (void)dir;
    CHECK_RC(addcow_header_layout(NULL), 0);
    CHECK_RC(addcow_header_cluster_size(NULL), 0);
    CHECK(addcow_header_image_file(NULL) == NULL);
    CHECK(addcow_header_backing_file(NULL) == NULL);
    CHECK(addcow_header_backing_format(NULL) == NULL);
    CHECK(addcow_header_image_format(NULL) == NULL);
    CHECK_RC(addcow_header_compatible_features(NULL), 0);
    CHECK_RC(addcow_header_incompatible_features(NULL), 0);
    CHECK_RC(addcow_header_bitmap_offset(NULL), 0);
    addcow_header_free(NULL);
    return T_PASS;
}

/* ------------------------------------------------------------------ addcow_get_backing_length */

int case_get_backing_length(const char *dir)
{
    char meta[PATH_MAX], base[PATH_MAX], top[PATH_MAX], plain[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(base, dir, "base.raw");
    pj(top, dir, "top.add-cow");
    pj(plain, dir, "plain.add-cow");
    const uint64_t blen = 2 * CL + 17;
    TRY(write_pat_file(base, blen, 1));
    CHECK_OK(create_img(meta, "img.raw", "base.raw", 4 * CL)); /* longer than its backing */
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, 0, &img));
    CHECK_RC(addcow_get_backing_length(img), blen);
    /* Unallocated bytes at or past it read as zeros. */
    uint8_t b[64], want[64];
    memset(want, 0, sizeof want);
    CHECK_OK(addcow_pread(img, blen, b, sizeof b));
    TRY(cmp_bytes(b, want, sizeof b, blen, "at the backing length"));
    CHECK_OK(addcow_pread(img, blen - 1, b, 1));
    CHECK(b[0] == pat(1, blen - 1));
    CHECK_OK(addcow_close(img));
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_NO_BACKING, &img));
    CHECK_RC(addcow_get_backing_length(img), 0);
    CHECK_OK(addcow_close(img));
    CHECK_OK(create_img(plain, "plain.raw", NULL, CL));
    CHECK_OK(addcow_open(plain, ADDCOW_OPEN_RDWR, &img));
    CHECK_RC(addcow_get_backing_length(img), 0);
    CHECK_OK(addcow_close(img));
    /* An add-cow backing: the length of the data it reads, its virtual size. */
    AddCowCreateOptions o = create_opts("top.raw", "img.add-cow", 5 * CL);
    o.backing_fmt = "add-cow";
    CHECK_OK(addcow_create(top, &o));
    CHECK_OK(addcow_open(top, ADDCOW_OPEN_BACKING_ADDCOW, &img));
    CHECK_RC(addcow_get_backing_length(img), 4 * CL);
    CHECK_OK(addcow_close(img));
    CHECK_RC(addcow_get_backing_length(NULL), -EINVAL);
    return T_PASS;
}
