/*
 * A program built the way a user of the installed library builds it:
 *     cc pkgconfig-consumer.c $(pkg-config --cflags --libs addcow)
 * (scripts/check-install.sh builds and runs it against a DESTDIR install, shared and static).
 * Creates an add-cow image without backing file in a temporary directory, writes, reads back.
 */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */

#include <addcow.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int fail(const char *what, int ret)
{
    fprintf(stderr, "pkgconfig-consumer: %s failed (%d): %s\n", what, ret, addcow_last_error());
    return 1;
}

int main(void)
{
    char dir[] = "/tmp/addcow-consumer-XXXXXX";
    char meta[64], raw[64];
    char buf[6] = { 0 };
    AddCowCreateOptions opts;
    AddCowImage *img = NULL;
    uint64_t pnum = 0;
    int ret, status = 1;

    if (!mkdtemp(dir)) {
        perror("pkgconfig-consumer: mkdtemp");
        return 1;
    }
    snprintf(meta, sizeof meta, "%s/disk.add-cow", dir);
    snprintf(raw, sizeof raw, "%s/disk.raw", dir);

    memset(&opts, 0, sizeof opts);
    opts.struct_size = sizeof opts;
    opts.image_file = "disk.raw";
    opts.size = 1 << 20;
    if ((ret = addcow_create(meta, &opts)) < 0) {
        fail("addcow_create", ret);
        goto out;
    }
    if ((ret = addcow_open(meta, ADDCOW_OPEN_RDWR, &img)) < 0) {
        fail("addcow_open", ret);
        goto out;
    }
    if ((ret = addcow_pwrite(img, 4096, "hello", 5)) < 0) {
        fail("addcow_pwrite", ret);
        goto out;
    }
    if ((ret = addcow_pread(img, 4096, buf, 5)) < 0) {
        fail("addcow_pread", ret);
        goto out;
    }
    if (strcmp(buf, "hello") != 0) {
        fprintf(stderr, "pkgconfig-consumer: read back \"%s\"\n", buf);
        goto out;
    }
    if ((ret = addcow_is_allocated(img, 0, 1 << 20, &pnum)) != 1 || pnum != 65536) {
        fprintf(stderr, "pkgconfig-consumer: is_allocated gave %d, %lu\n", ret,
                (unsigned long)pnum);
        goto out;
    }
    ret = addcow_close(img);
    img = NULL;
    if (ret < 0) {
        fail("addcow_close", ret);
        goto out;
    }
    printf("pkgconfig-consumer: libaddcow %s OK\n", addcow_version());
    status = 0;
out:
    if (img)
        addcow_close(img);
    unlink(meta);
    unlink(raw);
    rmdir(dir);
    return status;
}
