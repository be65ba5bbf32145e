/*
 * ADDCOW_OPEN_DIRECT: every file of the chain opened with O_DIRECT, and requests of any
 * alignment (offsets, lengths, buffer addresses, iovecs) against a model, also from threads
 * writing pieces of the same sectors at once. The temporary directory ($TMPDIR or /tmp) must be
 * on a file system with direct I/O: the open fails (-EINVAL) otherwise, and so do these cases.
 * `capi-tests --direct` runs the qemu-iotests cases of t_iotests.c with the flag too.
 */
#include "harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

/* How many descriptors of this process name files in `dir`, and how many of them have O_DIRECT
 * (from /proc/self/fdinfo). */
static int count_fds(const char *dir, int *files, int *direct)
{
    *files = *direct = 0;
    DIR *d = opendir("/proc/self/fd");
    CHECKF(d != NULL, "opendir /proc/self/fd: %s", strerror(errno));
    size_t n = strlen(dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char link[PATH_MAX], target[PATH_MAX], info[PATH_MAX];
        if (e->d_name[0] == '.')
            continue;
        snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
        ssize_t len = readlink(link, target, sizeof target - 1);
        if (len < 0)
            continue; /* the descriptor of the directory listing itself, gone */
        target[len] = '\0';
        if (strncmp(target, dir, n) != 0 || target[n] != '/')
            continue;
        snprintf(info, sizeof info, "/proc/self/fdinfo/%s", e->d_name);
        FILE *f = fopen(info, "r");
        CHECKF(f != NULL, "fopen %s: %s", info, strerror(errno));
        unsigned long flags = 0;
        char line[256];
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "flags: %lo", &flags) == 1)
                break;
        fclose(f);
        ++*files;
        if (flags & O_DIRECT)
            ++*direct;
    }
    closedir(d);
    return T_PASS;
}

/* top.add-cow over mid.add-cow over base.raw: with the flag, all five files are O_DIRECT;
 * without it, none. */
int case_direct_every_file_of_the_chain(const char *dir)
{
    char base[PATH_MAX], mid[PATH_MAX], top[PATH_MAX];
    pj(base, dir, "base.raw");
    pj(mid, dir, "mid.add-cow");
    pj(top, dir, "top.add-cow");
    TRY(write_pat_file(base, 2 * CL, 1));
    CHECK_OK(create_img(mid, "mid.raw", "base.raw", 0));
    AddCowCreateOptions o = create_opts("top.raw", "mid.add-cow", 0);
    o.backing_fmt = "add-cow";
    CHECK_OK(addcow_create(top, &o));
    const uint32_t modes[] = {ADDCOW_OPEN_DIRECT | ADDCOW_OPEN_RDWR, ADDCOW_OPEN_DIRECT, 0};
    for (size_t i = 0; i < 3; i++) {
        AddCowImage *img = NULL;
        CHECK_OK(addcow_open(top, modes[i] | ADDCOW_OPEN_BACKING_ADDCOW, &img));
        int files, direct;
        TRY(count_fds(dir, &files, &direct));
        CHECKF(files == 5, "flags %#x: %d open files, want 5", modes[i], files);
        int want = modes[i] & ADDCOW_OPEN_DIRECT ? 5 : 0;
        CHECKF(direct == want, "flags %#x: %d of 5 files with O_DIRECT, want %d", modes[i],
               direct, want);
        uint8_t *model = xmalloc(2 * CL);
        fill_pat(model, 2 * CL, 1, 0);
        TRY(read_expect(img, 0, model, 2 * CL, "through the chain"));
        free(model);
        CHECK_OK(addcow_close(img));
    }
    return T_PASS;
}

/* A buffer of `len` bytes at `shift` bytes past a 4096-aligned address. */
static uint8_t *buf_at(void **mem, size_t len, size_t shift)
{
    if (posix_memalign(mem, 4096, len + shift + 1) != 0)
        abort();
    return (uint8_t *)*mem + shift;
}

static int write_and_check(AddCowImage *img, uint8_t *model, uint64_t size, uint64_t off,
                           size_t len, size_t shift, uint32_t seed)
{
    void *wm, *rm;
    uint8_t *w = buf_at(&wm, len, shift), *r = buf_at(&rm, len, shift ? 0 : 7);
    fill_pat(w, len, seed, off);
    /* Two iovecs, the second one never aligned. */
    struct iovec iov[2] = {{w, len / 3}, {w + len / 3, len - len / 3}};
    int rc = addcow_writev(img, off, iov, 2);
    CHECKF(rc == 0, "writev(%llu, %zu, shift %zu) = %d: %s", (unsigned long long)off, len,
           shift, rc, addcow_last_error());
    memcpy(model + off, w, len);
    CHECK_OK(addcow_pread(img, off, r, len));
    int same = cmp_bytes(r, model + off, len, off, "read back");
    free(wm);
    free(rm);
    TRY(same);
    return read_expect(img, 0, model, size, "whole image");
}

struct piece_arg {
    AddCowImage *img;
    uint64_t base;
    int piece;
    int rc;
};

/* Writes its 64-byte piece of each of 16 sectors from `base`, in its own order. */
static void *piece_writer(void *p)
{
    struct piece_arg *a = p;
    uint8_t data[64];
    memset(data, 0x40 + a->piece, sizeof data);
    for (int i = 0; i < 16 && a->rc == 0; i++) {
        int s = (i * (2 * a->piece + 1)) % 16;
        a->rc = addcow_pwrite(a->img, a->base + (uint64_t)s * SEC + (uint64_t)a->piece * 64, data,
                              sizeof data);
    }
    return NULL;
}

/* Requests of every alignment through ADDCOW_OPEN_DIRECT against a model, then threads writing
 * different 64-byte pieces of the same sectors at once: each read-modify-write keeps the
 * others. The image file keeps its exact length; reopened buffered, it reads the same. */
int case_direct_unaligned_io(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX], base[PATH_MAX];
    const uint64_t size = 4 * CL + 3 * SEC + 100; /* not a multiple of any block size */
    pj(meta, dir, "img.add-cow");
    pj(raw, dir, "img.raw");
    pj(base, dir, "base.raw");
    TRY(write_pat_file(base, size, 1));
    CHECK_OK(create_img(meta, "img.raw", "base.raw", 0));
    uint8_t *model = xmalloc(size);
    fill_pat(model, size, 1, 0);
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR | ADDCOW_OPEN_DIRECT, &img));
    uint32_t seed = 2;
    const uint64_t offs[] = {0, 1, SEC - 1, SEC, 4096, 4097, CL - 3, 2 * CL + 4095};
    const size_t lens[] = {1, 100, SEC, 4096, 4097, CL + 1};
    for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++)
        for (size_t j = 0; j < sizeof lens / sizeof lens[0]; j++)
            for (size_t shift = 0; shift < 2; shift++)
                TRY(write_and_check(img, model, size, offs[i], lens[j], shift, seed++));
    /* Up to the last byte of the image. */
    TRY(write_and_check(img, model, size, size - 150, 150, 1, seed++));
    CHECK_RC(file_len(raw), size);

    pthread_t th[8];
    struct piece_arg args[8];
    const uint64_t at = 3 * CL + 1000; /* sectors of cluster 3, not yet allocated */
    for (int p = 0; p < 8; p++) {
        args[p] = (struct piece_arg){img, at - at % SEC, p, 0};
        CHECK(pthread_create(&th[p], NULL, piece_writer, &args[p]) == 0);
    }
    for (int p = 0; p < 8; p++) {
        CHECK(pthread_join(th[p], NULL) == 0);
        CHECKF(args[p].rc == 0, "writer %d: %d", p, args[p].rc);
    }
    for (int s = 0; s < 16; s++)
        for (int p = 0; p < 8; p++)
            memset(model + at - at % SEC + (uint64_t)s * SEC + (uint64_t)p * 64, 0x40 + p, 64);
    TRY(read_expect(img, 0, model, size, "after the piece writers"));
    CHECK_OK(addcow_close(img));
    CHECK_RC(file_len(raw), size);
    CHECK_OK(addcow_open(meta, 0, &img));
    TRY(read_expect(img, 0, model, size, "reopened without direct I/O"));
    CHECK_OK(addcow_close(img));
    free(model);
    return T_PASS;
}
