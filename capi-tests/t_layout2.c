/*
 * Layout 2 through the C API (docs/format.md "Layout 2"): create at 4 KiB, 64 KiB and 2 MiB
 * clusters and reopen, data and copy-on-write at the cluster size, the header accessors of
 * both layouts, the "all allocated" bit, and the refusals with their errno and message.
 */
#include "harness.h"

#include <unistd.h>

static int dummy_header;
/* Not a header: failing reads must replace it with NULL. */
#define SENTINEL_HEADER ((AddCowHeader *)(void *)&dummy_header)

/* The cluster sizes the cases cover: the smallest, the default and the largest. */
static const uint32_t cluster_sizes[] = {4096, 65536, 2u << 20};
#define NSIZES (sizeof cluster_sizes / sizeof cluster_sizes[0])

static AddCowCreateOptions l2_opts(const char *image, const char *backing, uint64_t size,
                                   uint32_t cluster_size)
{
    AddCowCreateOptions o = create_opts(image, backing, size);
    o.layout = 2;
    o.cluster_size = cluster_size;
    return o;
}

/* header_size = max(4096, cluster size). */
static uint64_t l2_header_size(uint64_t cs)
{
    return cs > 4096 ? cs : 4096;
}

/* header_size + ceil(clusters / 8) rounded up to whole clusters. */
static uint64_t l2_meta_len(uint64_t size, uint64_t cs)
{
    uint64_t bytes = ((size + cs - 1) / cs + 7) / 8;
    return l2_header_size(cs) + (bytes + cs - 1) / cs * cs;
}

static int streq(const char *a, const char *b)
{
    return a && b && strcmp(a, b) == 0;
}

/* The accessors of the header of `meta` against what a fresh image must report. */
static int header_is(const char *meta, uint32_t layout, uint64_t cs, uint64_t bitmap_offset,
                     const char *backing, const char *backing_format)
{
    AddCowHeader *h = NULL;
    CHECK_OK(addcow_header_read(meta, &h));
    CHECK_RC(addcow_header_layout(h), layout);
    CHECK_RC(addcow_header_cluster_size(h), cs);
    CHECK_RC(addcow_header_bitmap_offset(h), bitmap_offset);
    CHECK(streq(addcow_header_image_file(h), "img.raw"));
    CHECK(streq(addcow_header_image_format(h), "raw"));
    if (backing)
        CHECK(streq(addcow_header_backing_file(h), backing));
    else
        CHECK(addcow_header_backing_file(h) == NULL);
    if (backing_format)
        CHECKF(streq(addcow_header_backing_format(h), backing_format),
               "backing format \"%s\", want \"%s\"",
               addcow_header_backing_format(h) ? addcow_header_backing_format(h) : "(NULL)",
               backing_format);
    else
        CHECK(addcow_header_backing_format(h) == NULL);
    CHECK_RC(addcow_header_compatible_features(h), 0);
    CHECK_RC(addcow_header_incompatible_features(h), 0);
    addcow_header_free(h);
    return T_PASS;
}

int case_layout2_create_reopen(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(raw, dir, "img.raw");
    for (size_t i = 0; i < NSIZES; i++) {
        const uint64_t cs = cluster_sizes[i];
        /* Up to 70 clusters (a bitmap longer than one byte), the last one partial. */
        const uint64_t sizes[] = {0, 1, cs, 3 * cs + 512, 69 * cs + 1};
        for (size_t j = 0; j < sizeof sizes / sizeof sizes[0]; j++) {
            const uint64_t size = sizes[j];
            unlink(raw);
            AddCowCreateOptions o = l2_opts("img.raw", NULL, size, (uint32_t)cs);
            if (size == 0)
                TRY(write_file(raw, "", 0)); /* size 0: the existing image file gives it */
            CHECK_OK(addcow_create(meta, &o));
            CHECKF(file_len(meta) == (long long)l2_meta_len(size, cs),
                   "cluster %llu, size %llu: .add-cow is %lld bytes, want %llu",
                   (unsigned long long)cs, (unsigned long long)size, file_len(meta),
                   (unsigned long long)l2_meta_len(size, cs));
            CHECK(file_len(raw) == (long long)size);
            TRY(header_is(meta, 2, cs, l2_header_size(cs), NULL, NULL));
            AddCowImage *img = NULL;
            CHECK_OK(open_img(meta, ADDCOW_OPEN_RDWR, &img));
            CHECK_RC(addcow_get_length(img), size);
            CHECK_RC(addcow_get_cluster_size(img), cs);
            CHECK_OK(addcow_close(img));
        }
    }
    return T_PASS;
}

/* A sub-cluster write into cluster 1 of a 4-cluster image over a backing file: cluster 1 is
 * completed from the backing file in the image file, its bit (and only it) set; the other
 * clusters read the backing file. The same after reopening. */
static int round_trip(const char *dir, uint64_t cs)
{
    char meta[PATH_MAX], base[PATH_MAX], raw[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(base, dir, "base.raw");
    pj(raw, dir, "img.raw");
    const uint64_t size = 4 * cs;
    unlink(raw);
    TRY(write_pat_file(base, size, 1));
    AddCowCreateOptions o = l2_opts("img.raw", "base.raw", 0, (uint32_t)cs);
    CHECK_OK(addcow_create(meta, &o));
    TRY(header_is(meta, 2, cs, l2_header_size(cs), "base.raw", "raw"));

    uint8_t *want = xmalloc(size);
    fill_pat(want, size, 1, 0);
    uint8_t w[1000];
    fill_pat(w, sizeof w, 2, 0);
    const uint64_t at = cs + 100;
    memcpy(want + at, w, sizeof w);

    AddCowImage *img = NULL;
    CHECK_OK(open_img(meta, ADDCOW_OPEN_RDWR, &img));
    CHECK_OK(addcow_pwrite(img, at, w, sizeof w));
    for (int pass = 0; pass < 2; pass++) {
        uint64_t pnum = 0;
        CHECK_RC(addcow_is_allocated(img, 0, size, &pnum), 0);
        CHECK_RC(pnum, cs);
        CHECK_RC(addcow_is_allocated(img, cs, size - cs, &pnum), 1);
        CHECK_RC(pnum, cs);
        CHECK_RC(addcow_is_allocated(img, 2 * cs, 2 * cs, &pnum), 0);
        CHECK_RC(pnum, 2 * cs);
        TRY(read_expect(img, 0, want, size, "the whole image"));
        CHECK_OK(addcow_close(img));
        img = NULL;
        if (pass == 0)
            CHECK_OK(open_img(meta, 0, &img));
    }
    /* On disk: cluster 1 complete in the image file, bit 1 in the first bitmap byte. */
    uint8_t *got = xmalloc(cs);
    TRY(pread_file(raw, cs, got, cs));
    TRY(cmp_bytes(got, want + cs, cs, cs, "cluster 1 of the image file"));
    uint8_t bits = 0;
    TRY(pread_file(meta, l2_header_size(cs), &bits, 1));
    CHECKF(bits == 0x02, "first bitmap byte 0x%02x, want 0x02", bits);
    free(got);
    free(want);
    return T_PASS;
}

int case_layout2_round_trip(const char *dir)
{
    for (size_t i = 0; i < NSIZES; i++)
        TRY(round_trip(dir, cluster_sizes[i]));
    return T_PASS;
}

/* Filling every cluster sets the "all allocated" bit at close; the image then opens and reads
 * without its backing file. */
int case_layout2_all_allocated(const char *dir)
{
    char meta[PATH_MAX], base[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(base, dir, "base.raw");
    const uint64_t cs = 4096, size = 3 * cs;
    TRY(write_pat_file(base, size, 1));
    AddCowCreateOptions o = l2_opts("img.raw", "base.raw", size, (uint32_t)cs);
    CHECK_OK(addcow_create(meta, &o));
    uint8_t want[3 * 4096];
    fill_pat(want, sizeof want, 1, 0);
    memset(want + cs, 0xAB, 10);
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    for (uint64_t c = 0; c < size / cs; c++)
        CHECK_OK(addcow_pwrite(img, c * cs, want + c * cs, c == 1 ? 10 : 1));
    CHECK_OK(addcow_close(img));
    AddCowHeader *h = NULL;
    CHECK_OK(addcow_header_read(meta, &h));
    CHECK_RC(addcow_header_compatible_features(h), ADDCOW_COMPAT_ALL_ALLOCATED);
    CHECK(streq(addcow_header_backing_file(h), "base.raw"));
    addcow_header_free(h);
    CHECK(unlink(base) == 0);
    CHECK_OK(addcow_open(meta, 0, &img));
    TRY(read_expect(img, 0, want, size, "without the backing file"));
    CHECK_OK(addcow_close(img));
    return T_PASS;
}

/* Every accessor for layout 1 and layout 2, with no backing file, a raw one and an add-cow
 * one. Layout 1 records no backing format: NULL. */
int case_header_accessors_layouts(const char *dir)
{
    char meta[PATH_MAX], base[PATH_MAX], mid[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(base, dir, "base.raw");
    pj(mid, dir, "mid.add-cow");
    TRY(write_pat_file(base, CL, 1));
    CHECK_OK(create_img(mid, "mid.raw", "base.raw", 0));
    const char *fmts[] = {NULL, "raw", "add-cow"};
    const char *backings[] = {NULL, "base.raw", "mid.add-cow"};
    for (int k = 0; k < 3; k++) {
        AddCowCreateOptions o = create_opts("img.raw", backings[k], CL);
        o.backing_fmt = fmts[k];
        CHECK_OK(addcow_create(meta, &o));
        TRY(header_is(meta, 1, 65536, HDR, backings[k], NULL));
        o.layout = 2;
        o.cluster_size = 8192;
        CHECK_OK(addcow_create(meta, &o));
        TRY(header_is(meta, 2, 8192, 8192, backings[k], fmts[k]));
        o.cluster_size = 0; /* layout 2's default: 64 KiB */
        CHECK_OK(addcow_create(meta, &o));
        TRY(header_is(meta, 2, 65536, 65536, backings[k], fmts[k]));
    }
    return T_PASS;
}

/* Feature bits as stored: an unknown compatible bit is reported (and the image opens); any
 * incompatible bit refuses the header with -ENOTSUP naming the bit. */
int case_header_feature_bits(const char *dir)
{
    char meta[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    AddCowCreateOptions o = l2_opts("img.raw", NULL, 4096, 4096);
    CHECK_OK(addcow_create(meta, &o));
    size_t len = 0;
    uint8_t *bytes = read_whole(meta, &len);
    CHECK(bytes != NULL && len >= 76);
    bytes[32 + 5] = 0x01; /* compatible bit 40 (little-endian byte 5) */
    TRY(write_file(meta, bytes, len));
    AddCowHeader *h = NULL;
    CHECK_OK(addcow_header_read(meta, &h));
    CHECK_RC(addcow_header_compatible_features(h), 1ULL << 40);
    CHECK_RC(addcow_header_incompatible_features(h), 0);
    addcow_header_free(h);
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, 0, &img));
    CHECK_OK(addcow_close(img));
    bytes[24 + 1] = 0x04; /* incompatible bit 10 */
    TRY(write_file(meta, bytes, len));
    free(bytes);
    h = SENTINEL_HEADER;
    CHECK_RC(addcow_header_read(meta, &h), -ENOTSUP);
    CHECK(h == NULL);
    CHECK_MSG("incompatible feature bit 10");
    CHECK_RC(addcow_open(meta, 0, &img), -ENOTSUP);
    CHECK(img == NULL);
    return T_PASS;
}

/* `addcow_create(meta, o)` fails with `err` and a message, leaving no `.add-cow` file. */
static int refused(const char *meta, const AddCowCreateOptions *o, int err, const char *what)
{
    int rc = addcow_create(meta, o);
    CHECKF(rc == -err, "%s: returned %d (%s), want %s", what, rc, errname(rc), errname(-err));
    CHECKF(addcow_last_error()[0] != '\0', "%s: no message", what);
    CHECKF(file_len(meta) == -ENOENT, "%s: the .add-cow file exists", what);
    return T_PASS;
}

int case_layout2_create_refusals(const char *dir)
{
    char meta[PATH_MAX], what[64];
    pj(meta, dir, "img.add-cow");
    /* Layout 2: not a power of two, or outside 4 KiB .. 2 MiB. */
    const uint32_t bad[] = {1,          512,        2048,       4095,        4097,
                            3 * 4096,   65535,      65537,      (2u << 20) + 4096,
                            4u << 20,   1u << 31,   UINT32_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        AddCowCreateOptions o = l2_opts("img.raw", NULL, CL, bad[i]);
        snprintf(what, sizeof what, "layout 2, cluster_size %u", bad[i]);
        TRY(refused(meta, &o, EINVAL, what));
    }
    /* Layout 1 (0 = default, 1): 64 KiB only. */
    const uint32_t l1_bad[] = {4096, 32768, 131072, 2u << 20};
    for (uint32_t layout = 0; layout <= 1; layout++) {
        for (size_t i = 0; i < sizeof l1_bad / sizeof l1_bad[0]; i++) {
            AddCowCreateOptions o = create_opts("img.raw", NULL, CL);
            o.layout = layout;
            o.cluster_size = l1_bad[i];
            snprintf(what, sizeof what, "layout %u, cluster_size %u", layout, l1_bad[i]);
            TRY(refused(meta, &o, EINVAL, what));
        }
    }
    /* Unknown layouts, whatever the cluster size. */
    const uint32_t layouts[] = {3, 4, 0x100, UINT32_MAX};
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) {
        AddCowCreateOptions o = l2_opts("img.raw", NULL, CL, 4096);
        o.layout = layouts[i];
        snprintf(what, sizeof what, "layout %u", layouts[i]);
        TRY(refused(meta, &o, ENOTSUP, what));
    }
    /* Layout 2: the same name twice, and names that do not fit the 4 KiB header. */
    AddCowCreateOptions o = l2_opts("img.raw", "img.raw", CL, 4096);
    TRY(refused(meta, &o, EINVAL, "layout 2, image name = backing name"));
    static char longname[4100];
    memset(longname, 'n', sizeof longname - 1);
    o = l2_opts(longname, NULL, CL, 4096);
    TRY(refused(meta, &o, EINVAL, "layout 2, a 4099-byte name in a 4 KiB header"));
    return T_PASS;
}
