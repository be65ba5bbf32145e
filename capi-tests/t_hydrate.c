/*
 * Hydration: addcow_hydrate, the background job (addcow_hydrate_start, addcow_job_*) and
 * ADDCOW_OPEN_COPY_ON_READ.
 */
#include "harness.h"
#include "memio.h"

#include <pthread.h>

static int dummy_handle;
#define SENTINEL_JOB ((AddCowJob *)&dummy_handle)
#define SENTINEL_IMG ((AddCowImage *)&dummy_handle)

/* An image of 6 clusters over a patterned backing file of 3.5 clusters; cluster 4 written. */
#define HY_SIZE (6 * CL)
#define HY_BACKING (3 * CL + CL / 2)

/* Creates it in `dir` and fills `want` (HY_SIZE bytes) with what it reads. */
static int hy_make(const char *dir, char *meta, char *raw, uint8_t *want)
{
    TRY(make_overlay(dir, meta, HY_BACKING, 1, HY_SIZE));
    pj(raw, dir, "img.raw");
    memset(want, 0, HY_SIZE);
    fill_pat(want, HY_BACKING, 1, 0);
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    fill_pat(want + 4 * CL + 100, 1000, 2, 4 * CL + 100);
    CHECK_OK(addcow_pwrite(img, 4 * CL + 100, want + 4 * CL + 100, 1000));
    CHECK_OK(addcow_close(img));
    return T_PASS;
}

static int all_allocated(AddCowImage *img, uint64_t size)
{
    uint64_t n = 0;
    CHECK_RC(addcow_is_allocated(img, 0, size, &n), 1);
    CHECKF(n == size, "allocated run of %llu bytes, want %llu", (unsigned long long)n,
           (unsigned long long)size);
    return T_PASS;
}

static AddCowJobProgress progress(AddCowJob *job)
{
    AddCowJobProgress p;
    memset(&p, 0xA5, sizeof p);
    p.struct_size = sizeof p;
    if (addcow_job_progress(job, &p) != 0)
        memset(&p, 0, sizeof p);
    return p;
}

/* addcow_hydrate copies every unallocated cluster; the raw file then reads what the image
 * reads (past the backing file's end too); errors as documented. */
int case_hydrate_basic(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    uint8_t *want = xmalloc(HY_SIZE);
    TRY(hy_make(dir, meta, raw, want));
    AddCowImage *img = NULL;
    uint64_t done = 99;
    CHECK_RC(addcow_hydrate(NULL, 0, CL, &done), -EINVAL);
    CHECK_OK(addcow_open(meta, 0, &img));
    CHECK_RC(addcow_hydrate(img, 0, CL, &done), -EPERM);
    CHECK_OK(addcow_close(img));
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    CHECK_RC(addcow_hydrate(img, 5 * CL, 2 * CL, &done), -EINVAL);
    CHECK_OK(addcow_hydrate(img, CL + 1, 1, NULL)); /* cluster 1 */
    CHECK_OK(addcow_hydrate(img, 0, HY_SIZE, &done));
    CHECKF(done == 4, "copied %llu clusters, want 4 (0, 2, 3, 5)", (unsigned long long)done);
    TRY(all_allocated(img, HY_SIZE));
    TRY(read_expect(img, 0, want, HY_SIZE, "after hydrate"));
    CHECK_OK(addcow_hydrate(img, 0, HY_SIZE, &done));
    CHECK_RC(done, 0);
    CHECK_OK(addcow_close(img));
    TRY(file_is(raw, want, HY_SIZE, "the raw image file"));
    free(want);
    return T_PASS;
}

/* A job over the whole image completes; its progress counts; bad options are refused. */
int case_hydrate_job(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    uint8_t *want = xmalloc(HY_SIZE);
    TRY(hy_make(dir, meta, raw, want));
    AddCowImage *img = NULL;
    AddCowJob *job = SENTINEL_JOB;
    CHECK_OK(addcow_open(meta, 0, &img));
    CHECK_RC(addcow_hydrate_start(img, NULL, &job), -EPERM);
    CHECK(job == NULL);
    CHECK_OK(addcow_close(img));
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    CHECK_RC(addcow_hydrate_start(NULL, NULL, &job), -EINVAL);
    CHECK_RC(addcow_hydrate_start(img, NULL, NULL), -EINVAL);
    AddCowHydrateOptions o = {.struct_size = sizeof o, .flags = 1};
    CHECK_RC(addcow_hydrate_start(img, &o, &job), -EINVAL);
    o = (AddCowHydrateOptions){.struct_size = 4};
    CHECK_RC(addcow_hydrate_start(img, &o, &job), -EINVAL);
    o = (AddCowHydrateOptions){.struct_size = sizeof o, .offset = 5 * CL, .bytes = 2 * CL};
    CHECK_RC(addcow_hydrate_start(img, &o, &job), -EINVAL);
    o = (AddCowHydrateOptions){.struct_size = sizeof o, .batch = 2 * CL};
    CHECK_OK(addcow_hydrate_start(img, &o, &job));
    CHECK_OK(addcow_job_wait(job, -1));
    CHECK_OK(addcow_job_wait(job, 0)); /* ended: any number of times */
    AddCowJobProgress p = progress(job);
    CHECK_RC(p.state, ADDCOW_JOB_COMPLETED);
    CHECK_RC(p.total_clusters, 6);
    CHECK_RC(p.done_clusters, 6);
    CHECK_RC(p.copied_clusters, 5);
    CHECK_RC(p.error, 0);
    /* An older, shorter progress struct gets only its fields. */
    struct {
        uint32_t struct_size, state;
        uint64_t canary;
    } old = {.struct_size = 8, .canary = 0x1234};
    CHECK_OK(addcow_job_progress(job, (AddCowJobProgress *)&old));
    CHECK_RC(old.state, ADDCOW_JOB_COMPLETED);
    CHECK_RC(old.canary, 0x1234);
    CHECK_RC(addcow_job_progress(job, NULL), -EINVAL);
    old.struct_size = 4;
    CHECK_RC(addcow_job_progress(job, (AddCowJobProgress *)&old), -EINVAL);
    CHECK_RC(addcow_job_pause(NULL), -EINVAL);
    CHECK_RC(addcow_job_wait(NULL, 0), -EINVAL);
    addcow_job_free(job);
    addcow_job_free(NULL);
    TRY(read_expect(img, 0, want, HY_SIZE, "after the job"));
    CHECK_OK(addcow_close(img));
    /* Completed means flushed: another open sees every cluster allocated. */
    CHECK_OK(addcow_open(meta, 0, &img));
    TRY(all_allocated(img, HY_SIZE));
    CHECK_OK(addcow_close(img));
    free(want);
    return T_PASS;
}

/* Pause, resume, cancel; a new job resumes from the bitmap; closing the image stops a job and
 * leaves its handle usable. */
int case_hydrate_job_control(const char *dir)
{
    char meta[PATH_MAX];
    const uint64_t size = 64 * CL;
    TRY(make_overlay(dir, meta, size, 3, 0));
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    /* One cluster a second: it cannot finish while the test runs. */
    AddCowHydrateOptions o = {.struct_size = sizeof o, .rate = CL, .batch = CL};
    AddCowJob *job = NULL;
    CHECK_OK(addcow_hydrate_start(img, &o, &job));
    CHECK_OK(addcow_job_pause(job));
    CHECK_RC(addcow_job_wait(job, 10), -ETIMEDOUT);
    CHECK_RC(progress(job).state, ADDCOW_JOB_PAUSED);
    CHECK_OK(addcow_job_resume(job));
    CHECK_RC(progress(job).state, ADDCOW_JOB_RUNNING);
    CHECK_OK(addcow_job_cancel(job));
    CHECK_RC(addcow_job_wait(job, -1), -ECANCELED);
    AddCowJobProgress p = progress(job);
    CHECK_RC(p.state, ADDCOW_JOB_CANCELLED);
    CHECK(p.copied_clusters < 64);
    addcow_job_free(job);
    /* The rest, by a new job. */
    CHECK_OK(addcow_hydrate_start(img, NULL, &job));
    CHECK_OK(addcow_job_wait(job, -1));
    CHECK_RC(progress(job).copied_clusters, 64 - p.copied_clusters);
    addcow_job_free(job);
    /* A job still running when the image closes. */
    CHECK_OK(addcow_close(img));
    TRY(make_overlay(dir, meta, size, 3, 0));
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    CHECK_OK(addcow_hydrate_start(img, &o, &job));
    CHECK_OK(addcow_close(img));
    CHECK_RC(addcow_job_wait(job, 0), -ECANCELED);
    CHECK_RC(progress(job).state, ADDCOW_JOB_CANCELLED);
    CHECK_OK(addcow_job_pause(job)); /* ended: nothing happens */
    CHECK_RC(progress(job).state, ADDCOW_JOB_CANCELLED);
    addcow_job_free(job);
    return T_PASS;
}

struct writer {
    AddCowImage *img;
    uint8_t *want;
    int id, rc;
};

/* Writes its own clusters (c % 3 == id) while a job hydrates. */
static void *writer_main(void *arg)
{
    struct writer *w = arg;
    for (int round = 0; round < 20; round++) {
        uint64_t c = (uint64_t)((round * 7) % 16) * 3 + (uint64_t)w->id;
        uint64_t off = c * CL + (uint64_t)round * 1000;
        uint8_t buf[3000];
        fill_pat(buf, sizeof buf, 10 + (uint32_t)w->id * 100 + (uint32_t)round, off);
        if (addcow_pwrite(w->img, off, buf, sizeof buf) != 0) {
            w->rc = T_FAIL;
            return NULL;
        }
        memcpy(w->want + off, buf, sizeof buf);
    }
    w->rc = T_PASS;
    return NULL;
}

/* Guest writes beside a job: the guest's data wins everywhere. */
int case_hydrate_job_with_writers(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    const uint64_t size = 48 * CL;
    TRY(make_overlay(dir, meta, size, 4, 0));
    pj(raw, dir, "img.raw");
    uint8_t *want = xmalloc(size);
    fill_pat(want, size, 4, 0);
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR, &img));
    AddCowHydrateOptions o = {.struct_size = sizeof o, .batch = CL};
    AddCowJob *job = NULL;
    CHECK_OK(addcow_hydrate_start(img, &o, &job));
    struct writer w[3];
    pthread_t t[3];
    for (int i = 0; i < 3; i++) {
        w[i] = (struct writer){img, want, i, T_FAIL};
        CHECK(pthread_create(&t[i], NULL, writer_main, &w[i]) == 0);
    }
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < 3; i++)
        CHECK_RC(w[i].rc, T_PASS);
    CHECK_OK(addcow_job_wait(job, -1));
    addcow_job_free(job);
    TRY(all_allocated(img, size));
    TRY(read_expect(img, 0, want, size, "after the job and the writers"));
    CHECK_OK(addcow_close(img));
    TRY(file_is(raw, want, size, "the raw image file"));
    free(want);
    return T_PASS;
}

/* A job whose writes fail ends ADDCOW_JOB_FAILED with the errno and a message. */
int case_hydrate_job_fails(const char *dir)
{
    (void)dir;
    struct faults f;
    memfile mm, mi, mb;
    memset(&f, 0, sizeof f);
    mf_init(&mm, "meta", &f);
    mf_init(&mi, "image", &f);
    mf_init(&mb, "backing", &f);
    AddCowIo mio = mf_io(&mm, 1), iio = mf_io(&mi, 1), bio = mf_io(&mb, 1);
    mf_make_meta(&mm, "image.raw", "base.raw", 8 * CL);
    mf_set_zero(&mi, 8 * CL);
    mf_set_pat(&mb, 8 * CL, 5);
    AddCowImage *img = NULL;
    CHECK_OK(addcow_open_io(&mio, &iio, &bio, ADDCOW_OPEN_RDWR, &img));
    f.err = ENOSPC;
    f.sticky = 1;
    f.fail_at = atomic_load(&f.calls) + 3;
    AddCowJob *job = NULL;
    CHECK_OK(addcow_hydrate_start(img, NULL, &job));
    CHECK_RC(addcow_job_wait(job, -1), -ENOSPC);
    CHECK_MSG("No space left");
    AddCowJobProgress p = progress(job);
    CHECK_RC(p.state, ADDCOW_JOB_FAILED);
    CHECK_RC(p.error, -ENOSPC);
    addcow_job_free(job);
    f.fail_at = 0;
    f.sticky = 0;
    addcow_close(img); /* may fail: the failed flush dropped pages */
    mf_free(&mm);
    mf_free(&mi);
    mf_free(&mb);
    return T_PASS;
}

/* ADDCOW_OPEN_COPY_ON_READ: reads within the backing data hydrate; read-only refuses it. */
int case_open_copy_on_read(const char *dir)
{
    char meta[PATH_MAX], raw[PATH_MAX];
    uint8_t *want = xmalloc(HY_SIZE);
    TRY(hy_make(dir, meta, raw, want));
    AddCowImage *img = SENTINEL_IMG;
    CHECK_RC(addcow_open(meta, ADDCOW_OPEN_COPY_ON_READ, &img), -EINVAL);
    CHECK(img == NULL);
    CHECK_OK(addcow_open(meta, ADDCOW_OPEN_RDWR | ADDCOW_OPEN_COPY_ON_READ, &img));
    TRY(read_expect(img, CL - 10, want + CL - 10, 20, "across clusters 0 and 1"));
    uint64_t n = 0;
    CHECK_RC(addcow_is_allocated(img, 0, HY_SIZE, &n), 1);
    CHECK_RC(n, 2 * CL);
    /* Past the backing file's end: zeros, nothing copied. */
    TRY(read_expect(img, 5 * CL, want + 5 * CL, CL, "cluster 5"));
    CHECK_RC(addcow_is_allocated(img, 5 * CL, CL, &n), 0);
    CHECK_OK(addcow_close(img));
    uint8_t got[20];
    TRY(pread_file(raw, CL - 10, got, sizeof got));
    TRY(cmp_bytes(got, want + CL - 10, sizeof got, CL - 10, "the raw image file"));
    free(want);
    return T_PASS;
}
