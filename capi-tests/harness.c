/*
 * The runner and shared helpers.
 *
 *   capi-tests CASE            run one case in its own temp dir: exit 0 pass, 1 fail, 77 skip
 *   capi-tests                 run every case, print a summary
 *   capi-tests --list          print the case names
 *   capi-tests --check-list N… exit 1 unless N… is exactly the set of cases (checks that
 *                              meson.build read cases.h right)
 *   capi-tests --direct …      as above, for the DIRECT_CASEs only, their images opened with
 *                              ADDCOW_OPEN_DIRECT (g_open_flags); naming another case fails
 */
#include "harness.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cases.h"

#define CASE(name) int case_##name(const char *dir);
#define DIRECT_CASE(name) CASE(name)
CASE_LIST
#undef CASE
#undef DIRECT_CASE

struct tcase {
    const char *name;
    int (*fn)(const char *dir);
    int direct; /* a DIRECT_CASE: honours g_open_flags, so --direct runs it with direct I/O */
};

static const struct tcase cases[] = {
#define CASE(name) {#name, case_##name, 0},
#define DIRECT_CASE(name) {#name, case_##name, 1},
    CASE_LIST
#undef CASE
#undef DIRECT_CASE
};
#define NCASES (sizeof cases / sizeof cases[0])

const char *g_case = "?";
uint32_t g_open_flags = 0;

int open_img(const char *meta, uint32_t flags, AddCowImage **img)
{
    return addcow_open(meta, flags | g_open_flags, img);
}

void t_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "FAIL [%s] %s:%d: ", g_case, file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

void t_note(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "  [%s] ", g_case);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

const char *errname(long long rc)
{
    switch (rc) {
    case 0: return "ok";
    case -EINVAL: return "-EINVAL";
    case -ENOENT: return "-ENOENT";
    case -ENOTSUP: return "-ENOTSUP";
    case -EPERM: return "-EPERM";
    case -EIO: return "-EIO";
    case -ENOSPC: return "-ENOSPC";
    case -EEXIST: return "-EEXIST";
    case -EISDIR: return "-EISDIR";
    case -EBADF: return "-EBADF";
    case -EACCES: return "-EACCES";
    case -EBUSY: return "-EBUSY";
    case -EFBIG: return "-EFBIG";
    default: return rc < 0 ? "-errno?" : "value";
    }
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        perror("malloc");
        abort();
    }
    return p;
}

void *xcalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        perror("calloc");
        abort();
    }
    return p;
}

void pj(char *out, const char *dir, const char *name)
{
    int n = snprintf(out, PATH_MAX, "%s/%s", dir, name);
    if (n < 0 || n >= PATH_MAX) {
        fprintf(stderr, "path too long: %s/%s\n", dir, name);
        abort();
    }
}

uint8_t pat(uint32_t seed, uint64_t off)
{
    uint64_t x = off * 0x9E3779B97F4A7C15ull ^ ((uint64_t)seed * 0xC2B2AE3D27D4EB4Full);
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 32;
    return (uint8_t)(x % 255 + 1);
}

void fill_pat(uint8_t *buf, size_t len, uint32_t seed, uint64_t off)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = pat(seed, off + i);
}

int write_file(const char *path, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        fprintf(stderr, "open %s: %s\n", path, strerror(errno));
        return T_FAIL;
    }
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n <= 0) {
            fprintf(stderr, "write %s: %s\n", path, strerror(errno));
            close(fd);
            return T_FAIL;
        }
        p += n;
        len -= (size_t)n;
    }
    close(fd);
    return T_PASS;
}

int write_pat_file(const char *path, uint64_t len, uint32_t seed)
{
    uint8_t *buf = xmalloc(len);
    fill_pat(buf, len, seed, 0);
    int r = write_file(path, buf, len);
    free(buf);
    return r;
}

uint8_t *read_whole(const char *path, size_t *len)
{
    long long l = file_len(path);
    if (l < 0)
        return NULL;
    uint8_t *buf = xmalloc((size_t)l);
    if (pread_file(path, 0, buf, (size_t)l) != T_PASS) {
        free(buf);
        return NULL;
    }
    *len = (size_t)l;
    return buf;
}

long long file_len(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return -errno;
    return (long long)st.st_size;
}

int pread_file(const char *path, uint64_t off, void *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        fprintf(stderr, "open %s: %s\n", path, strerror(errno));
        return T_FAIL;
    }
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            fprintf(stderr, "pread %s: %s\n", path, strerror(errno));
            close(fd);
            return T_FAIL;
        }
        if (n == 0) { /* past the end: zeros */
            memset(p, 0, len);
            break;
        }
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    close(fd);
    return T_PASS;
}

AddCowCreateOptions create_opts(const char *image_file, const char *backing, uint64_t size)
{
    AddCowCreateOptions o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.image_file = image_file;
    o.backing_file = backing;
    o.size = size;
    return o;
}

int create_img(const char *meta, const char *image_file, const char *backing, uint64_t size)
{
    AddCowCreateOptions o = create_opts(image_file, backing, size);
    return addcow_create(meta, &o);
}

int make_overlay(const char *dir, char *meta, uint64_t blen, uint32_t seed, uint64_t size)
{
    char base[PATH_MAX];
    pj(meta, dir, "img.add-cow");
    pj(base, dir, "base.raw");
    TRY(write_pat_file(base, blen, seed));
    CHECK_OK(create_img(meta, "img.raw", "base.raw", size));
    return T_PASS;
}

int file_is(const char *path, const uint8_t *want, size_t len, const char *what)
{
    size_t got_len = 0;
    uint8_t *got = read_whole(path, &got_len);
    CHECKF(got != NULL && got_len == len, "%s (%s) is %zu bytes, want %zu", what, path, got_len,
           len);
    int rc = cmp_bytes(got, want, len, 0, what);
    free(got);
    return rc;
}

int cmp_bytes(const uint8_t *got, const uint8_t *want, size_t len, uint64_t base,
              const char *what)
{
    if (memcmp(got, want, len) == 0)
        return T_PASS;
    size_t i = 0;
    while (got[i] == want[i])
        i++;
    size_t j = len;
    while (got[j - 1] == want[j - 1])
        j--;
    fprintf(stderr, "FAIL [%s] %s: bytes differ in [%llu, %llu) (of [%llu, %llu)): "
            "first at %llu got 0x%02x want 0x%02x\n", g_case, what,
            (unsigned long long)(base + i), (unsigned long long)(base + j),
            (unsigned long long)base, (unsigned long long)(base + len),
            (unsigned long long)(base + i), got[i], want[i]);
    return T_FAIL;
}

int read_expect(AddCowImage *img, uint64_t off, const uint8_t *want, size_t len,
                const char *what)
{
    uint8_t *got = xmalloc(len);
    memset(got, 0xA5, len);
    int rc = addcow_pread(img, off, got, len);
    if (rc != 0) {
        fprintf(stderr, "FAIL [%s] %s: addcow_pread(%llu, %zu) = %d (%s): %s\n", g_case, what,
                (unsigned long long)off, len, rc, errname(rc), addcow_last_error());
        free(got);
        return T_FAIL;
    }
    int r = cmp_bytes(got, want, len, off, what);
    free(got);
    return r;
}

int all_zero(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i])
            return 0;
    return 1;
}

/* ---- temp dirs ---- */

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    if (remove(path) != 0)
        fprintf(stderr, "remove %s: %s\n", path, strerror(errno));
    return 0;
}

static int run_case(const struct tcase *c)
{
    const char *tmp = getenv("TMPDIR");
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/addcow-capi-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp",
             c->name);
    if (!mkdtemp(dir)) {
        fprintf(stderr, "mkdtemp %s: %s\n", dir, strerror(errno));
        return T_FAIL;
    }
    g_case = c->name;
    int r = c->fn(dir);
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    if (r != T_PASS && r != T_SKIP)
        r = T_FAIL;
    return r;
}

/* With --direct, only the DIRECT_CASEs exist. */
static int listed(const struct tcase *c)
{
    return !(g_open_flags & ADDCOW_OPEN_DIRECT) || c->direct;
}

static const struct tcase *find(const char *name)
{
    for (size_t i = 0; i < NCASES; i++)
        if (listed(&cases[i]) && strcmp(cases[i].name, name) == 0)
            return &cases[i];
    return NULL;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && strcmp(argv[1], "--direct") == 0) {
        g_open_flags |= ADDCOW_OPEN_DIRECT;
        argv[1] = argv[0];
        argv++;
        argc--;
    }
    const char *which = g_open_flags & ADDCOW_OPEN_DIRECT ? "DIRECT_CASE" : "case";
    if (argc >= 2 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < NCASES; i++)
            if (listed(&cases[i]))
                printf("%s\n", cases[i].name);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "--check-list") == 0) {
        int bad = 0;
        for (int a = 2; a < argc; a++) {
            if (!find(argv[a])) {
                fprintf(stderr, "meson read %s '%s', which cases.h does not have\n", which,
                        argv[a]);
                bad = 1;
            }
        }
        for (size_t i = 0; i < NCASES; i++) {
            int seen = !listed(&cases[i]);
            for (int a = 2; a < argc; a++)
                seen |= strcmp(argv[a], cases[i].name) == 0;
            if (!seen) {
                fprintf(stderr, "meson did not read %s '%s' of cases.h (one per line?)\n",
                        which, cases[i].name);
                bad = 1;
            }
        }
        return bad;
    }
    if (argc >= 2) {
        int worst = T_PASS;
        for (int a = 1; a < argc; a++) {
            const struct tcase *c = find(argv[a]);
            if (!c) {
                fprintf(stderr, "unknown %s '%s' (--list shows them)\n", which, argv[a]);
                return 2;
            }
            int r = run_case(c);
            if (r == T_FAIL || (r == T_SKIP && worst == T_PASS))
                worst = r;
        }
        return worst;
    }
    int pass = 0, fail = 0, skip = 0;
    double t0 = now();
    for (size_t i = 0; i < NCASES; i++) {
        if (!listed(&cases[i]))
            continue;
        double t = now();
        int r = run_case(&cases[i]);
        const char *what = r == T_PASS ? "ok" : r == T_SKIP ? "SKIP" : "FAIL";
        printf("%-4s %-44s %.2fs\n", what, cases[i].name, now() - t);
        if (r == T_PASS)
            pass++;
        else if (r == T_SKIP)
            skip++;
        else
            fail++;
    }
    printf("%d passed, %d failed, %d skipped in %.2fs\n", pass, fail, skip, now() - t0);
    return fail ? 1 : 0;
}
