/*
 * Quickstart for libaddcow from C: creates a raw base image, an add-cow overlay over it, writes
 * through the overlay, reads everything back and checks it, and prints the allocation map.
 *
 *     quickstart [DIR]
 *
 * works in DIR (which must exist) and leaves the files there, or in a fresh temporary directory
 * that it removes again. Build it with meson (build/quickstart), or by hand:
 *
 *     gcc examples/quickstart.c -Iinclude -Lbuild -laddcow -o quickstart
 */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */

#include <addcow.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define CLUSTER ((uint64_t)65536)
#define BASE_SIZE (4 * CLUSTER)  /* the backing file: clusters 0-3 */
#define IMAGE_SIZE (8 * CLUSTER) /* the overlay: clusters 0-7, 4-7 past the backing file's end */

/* Prints a failed call with the library's message; returns ret unchanged. */
static int check(int ret, const char *what)
{
    if (ret < 0)
        fprintf(stderr, "quickstart: %s failed: %s: %s\n", what, strerror(-ret),
                addcow_last_error());
    return ret;
}

static unsigned char base_byte(uint64_t off)
{
    return (unsigned char)(off % 251);
}

static char *join(const char *dir, const char *name)
{
    size_t len = strlen(dir) + 1 + strlen(name) + 1;
    char *p = malloc(len);
    if (!p) {
        perror("quickstart: malloc");
        exit(1);
    }
    snprintf(p, len, "%s/%s", dir, name);
    return p;
}

static int write_base(const char *path)
{
    unsigned char *buf = malloc(BASE_SIZE);
    FILE *f;
    uint64_t i;
    int ok;

    if (!buf) {
        perror("quickstart: malloc");
        return -1;
    }
    for (i = 0; i < BASE_SIZE; i++)
        buf[i] = base_byte(i);
    f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "quickstart: %s: %s\n", path, strerror(errno));
        free(buf);
        return -1;
    }
    ok = fwrite(buf, 1, BASE_SIZE, f) == BASE_SIZE;
    ok = (fclose(f) == 0) && ok;
    if (!ok)
        fprintf(stderr, "quickstart: writing %s failed\n", path);
    free(buf);
    return ok ? 0 : -1;
}

/* Reads the whole image and compares it with what the model says it holds. */
static int verify(AddCowImage *img, const unsigned char *model, const char *when)
{
    unsigned char *buf = malloc(IMAGE_SIZE);
    uint64_t i;
    int ret;

    if (!buf) {
        perror("quickstart: malloc");
        return -1;
    }
    ret = check(addcow_pread(img, 0, buf, IMAGE_SIZE), "addcow_pread");
    if (ret == 0) {
        for (i = 0; i < IMAGE_SIZE; i++) {
            if (buf[i] != model[i]) {
                fprintf(stderr, "quickstart: %s: byte %" PRIu64 " is %u, expected %u\n", when,
                        i, buf[i], model[i]);
                ret = -1;
                break;
            }
        }
    }
    free(buf);
    if (ret == 0)
        printf("read back %" PRIu64 " bytes %s: all as expected\n", IMAGE_SIZE, when);
    return ret;
}

/* Prints the allocation map and checks it against the clusters written (1, 3, 4, 5). */
static int print_map(AddCowImage *img)
{
    static const int allocated[8] = { 0, 1, 0, 1, 1, 1, 0, 0 };
    uint64_t off = 0, pnum, i;
    int ret;

    printf("allocation map:\n");
    while (off < IMAGE_SIZE) {
        ret = check(addcow_is_allocated(img, off, IMAGE_SIZE - off, &pnum),
                    "addcow_is_allocated");
        if (ret < 0)
            return ret;
        if (pnum == 0) {
            fprintf(stderr, "quickstart: addcow_is_allocated gave an empty run at %" PRIu64 "\n",
                    off);
            return -1;
        }
        printf("  offset %8" PRIu64 "  length %8" PRIu64 "  %s\n", off, pnum,
               ret ? "image" : "backing");
        for (i = off; i < off + pnum; i += CLUSTER) {
            if (allocated[i / CLUSTER] != ret) {
                fprintf(stderr, "quickstart: cluster %" PRIu64 " should be %s\n", i / CLUSTER,
                        allocated[i / CLUSTER] ? "allocated" : "unallocated");
                return -1;
            }
        }
        off += pnum;
    }
    return 0;
}

static int run(const char *dir)
{
    char *base = join(dir, "base.raw");
    char *overlay = join(dir, "vm.add-cow");
    unsigned char *model = calloc(1, IMAGE_SIZE);
    unsigned char *big = malloc(2 * CLUSTER);
    static const char hello[] = "hello, add-cow";
    AddCowCreateOptions opts;
    AddCowImage *img = NULL;
    struct iovec iov[2];
    uint64_t i, big_off = 3 * CLUSTER + 4096;
    int ret = -1;

    if (!model || !big) {
        perror("quickstart: malloc");
        goto out;
    }
    printf("libaddcow %s, working in %s\n", addcow_version(), dir);

    /* 1. A raw base image with a pattern. */
    if (write_base(base) < 0)
        goto out;
    for (i = 0; i < BASE_SIZE; i++)
        model[i] = base_byte(i);

    /* 2. An add-cow overlay: vm.add-cow + raw image file vm.raw, backed by base.raw. Relative
     * names resolve against the .add-cow file's directory. */
    memset(&opts, 0, sizeof opts);
    opts.struct_size = sizeof opts;
    opts.image_file = "vm.raw";
    opts.backing_file = "base.raw";
    opts.size = IMAGE_SIZE;
    if (check(addcow_create(overlay, &opts), "addcow_create") < 0)
        goto out;

    /* 3. Open it for writing. */
    if (check(addcow_open(overlay, ADDCOW_OPEN_RDWR, &img), "addcow_open") < 0)
        goto out;
    if (addcow_get_length(img) != (int64_t)IMAGE_SIZE ||
        addcow_get_cluster_size(img) != (int64_t)CLUSTER) {
        fprintf(stderr, "quickstart: unexpected size %" PRId64 " or cluster size %" PRId64 "\n",
                addcow_get_length(img), addcow_get_cluster_size(img));
        goto out;
    }

    /* 4. A write inside one cluster: the rest of cluster 1 is copied from base.raw. */
    if (check(addcow_pwrite(img, CLUSTER + 1000, hello, sizeof hello), "addcow_pwrite") < 0)
        goto out;
    memcpy(model + CLUSTER + 1000, hello, sizeof hello);

    /* 5. A write over clusters 3-5 from two buffers: cluster 3 is completed from base.raw,
     * clusters 4-5 (past its end) with zeros. */
    for (i = 0; i < 2 * CLUSTER; i++)
        big[i] = (unsigned char)(0xA5 ^ (i >> 8));
    iov[0].iov_base = big;
    iov[0].iov_len = 3 * 4096;
    iov[1].iov_base = big + 3 * 4096;
    iov[1].iov_len = 2 * CLUSTER - 3 * 4096;
    if (check(addcow_writev(img, big_off, iov, 2), "addcow_writev") < 0)
        goto out;
    memcpy(model + big_off, big, 2 * CLUSTER);

    /* 6. Read back, make it durable, print the allocation map, close. */
    if (verify(img, model, "after writing") < 0)
        goto out;
    if (check(addcow_flush(img), "addcow_flush") < 0)
        goto out;
    if (print_map(img) < 0)
        goto out;
    ret = check(addcow_close(img), "addcow_close");
    img = NULL;
    if (ret < 0)
        goto out;
    ret = -1;

    /* 7. Reopen read-only: the data is still there, and writing is refused with -EPERM. */
    if (check(addcow_open(overlay, 0, &img), "addcow_open (read-only)") < 0)
        goto out;
    if (verify(img, model, "after reopening") < 0)
        goto out;
    {
        int w = addcow_pwrite(img, 0, hello, sizeof hello);
        if (w != -EPERM) {
            fprintf(stderr, "quickstart: writing a read-only image returned %d, expected %d\n", w,
                    -EPERM);
            goto out;
        }
        printf("writing the read-only image fails as it should: %s\n", addcow_last_error());
    }
    ret = check(addcow_close(img), "addcow_close");
    img = NULL;

out:
    if (img)
        addcow_close(img);
    free(base);
    free(overlay);
    free(model);
    free(big);
    return ret;
}

int main(int argc, char **argv)
{
    char tmpl[4096];
    const char *dir;
    int ret;

    if (argc > 2) {
        fprintf(stderr, "usage: %s [DIR]\n", argv[0]);
        return 2;
    }
    if (argc == 2) {
        dir = argv[1];
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(tmpl, sizeof tmpl, "%s/addcow-quickstart-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        dir = mkdtemp(tmpl);
        if (!dir) {
            fprintf(stderr, "quickstart: mkdtemp %s: %s\n", tmpl, strerror(errno));
            return 1;
        }
    }

    ret = run(dir);

    if (argc == 1) {
        static const char *const names[] = { "base.raw", "vm.raw", "vm.add-cow" };
        size_t i;
        for (i = 0; i < sizeof names / sizeof names[0]; i++) {
            char *p = join(dir, names[i]);
            if (unlink(p) < 0 && errno != ENOENT)
                fprintf(stderr, "quickstart: unlink %s: %s\n", p, strerror(errno));
            free(p);
        }
        if (rmdir(dir) < 0)
            fprintf(stderr, "quickstart: rmdir %s: %s\n", dir, strerror(errno));
    }
    if (ret < 0) {
        fprintf(stderr, "quickstart: FAILED\n");
        return 1;
    }
    printf("quickstart: OK\n");
    return 0;
}
