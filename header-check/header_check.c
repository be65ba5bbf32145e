/*
 * Compile check of include/addcow.h: meson builds this file as C99 and C11 (and, through
 * header_check.cpp, as C++) with -Wall -Wextra -Werror -pedantic, links it against libaddcow
 * and runs it. It pins the ABI the header promises: every prototype (through typed function
 * pointers, so a changed signature is an error), the flag values, and the struct layouts on
 * LP64. Written in the common subset of C and C++.
 */
#include <addcow.h>

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#if defined(__cplusplus)
#define ADDCOW_CHECK(cond, name) static_assert(cond, #name)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define ADDCOW_CHECK(cond, name) _Static_assert(cond, #name)
#else
#define ADDCOW_CHECK(cond, name) typedef char addcow_check_##name[(cond) ? 1 : -1]
#endif

ADDCOW_CHECK(ADDCOW_OPEN_RDWR == 1, open_rdwr);
ADDCOW_CHECK(ADDCOW_OPEN_WRITETHROUGH == 2, open_writethrough);
ADDCOW_CHECK(ADDCOW_OPEN_NO_BACKING == 4, open_no_backing);
ADDCOW_CHECK(ADDCOW_OPEN_BACKING_ADDCOW == 8, open_backing_addcow);
ADDCOW_CHECK(ADDCOW_OPEN_FORCE_SHARE == 16, open_force_share);
ADDCOW_CHECK(ADDCOW_OPEN_CONFINE == 32, open_confine);
ADDCOW_CHECK(ADDCOW_OPEN_DIRECT == 64, open_direct);
ADDCOW_CHECK(ADDCOW_CREATE_CONFINE == 1, create_confine);
ADDCOW_CHECK(ADDCOW_CREATE_SIZE_EXACT == 2, create_size_exact);
ADDCOW_CHECK(ADDCOW_COMPAT_ALL_ALLOCATED == 1, compat_all_allocated);
ADDCOW_CHECK(ADDCOW_MAX_SIZE == 1ULL << 56, max_size);
ADDCOW_CHECK(ADDCOW_IOV_MAX == 1024, iov_max);
ADDCOW_CHECK(ADDCOW_DETACH_REMOVE == 1, detach_remove);
ADDCOW_CHECK(ADDCOW_COMMIT_EMPTY == 1, commit_empty);
ADDCOW_CHECK(ADDCOW_COMMIT_BACKING_ADDCOW == 2, commit_backing_addcow);
ADDCOW_CHECK(ADDCOW_CHECK_REPAIR == 1, check_repair);
ADDCOW_CHECK(ADDCOW_CHECK_CORRUPTIONS == 0 && ADDCOW_CHECK_FINDINGS == 6, check_counters);
ADDCOW_CHECK(ADDCOW_CHECK_CORRUPTION == 1 && ADDCOW_CHECK_LEAK == 2 && ADDCOW_CHECK_NOTE == 3,
             check_kinds);
ADDCOW_CHECK(ADDCOW_CHECK_REPAIRED == 0x100, check_repaired);

ADDCOW_CHECK(offsetof(AddCowCreateOptions, struct_size) == 0, struct_size_first);
ADDCOW_CHECK(offsetof(AddCowCreateOptions, layout) == 4, layout_offset);
ADDCOW_CHECK(sizeof(void *) != 8 || offsetof(AddCowCreateOptions, image_file) == 8, image_file_lp64);
ADDCOW_CHECK(sizeof(void *) != 8 || offsetof(AddCowCreateOptions, size) == 32, size_lp64);
ADDCOW_CHECK(sizeof(void *) != 8 || offsetof(AddCowCreateOptions, flags) == 44, flags_lp64);
ADDCOW_CHECK(sizeof(void *) != 8 || sizeof(AddCowCreateOptions) == 48, create_options_lp64);
ADDCOW_CHECK(offsetof(AddCowOpenOptions, struct_size) == 0, open_struct_size_first);
ADDCOW_CHECK(offsetof(AddCowOpenOptions, flags) == 4, open_flags_offset);
ADDCOW_CHECK(offsetof(AddCowOpenOptions, bitmap_cache_size) == 8, open_cache_offset);
ADDCOW_CHECK(sizeof(AddCowOpenOptions) == 16, open_options_size);
ADDCOW_CHECK(offsetof(AddCowIo, opaque) == 0, io_opaque_first);
ADDCOW_CHECK(sizeof(AddCowIo) == 6 * sizeof(void *), io_size);

/* The mapping core's constants and its versioned out struct. */
ADDCOW_CHECK(ADDCOW_MAP_DATA == 1 && ADDCOW_MAP_BACKING == 2 && ADDCOW_MAP_ZERO == 3, map_kinds);
ADDCOW_CHECK(ADDCOW_STEP_IN_PLACE == 1 && ADDCOW_STEP_ALLOCATE == 2 && ADDCOW_STEP_BUSY == 3,
             step_kinds);
ADDCOW_CHECK(ADDCOW_BUSY == 1, busy);
ADDCOW_CHECK(offsetof(AddCowWriteStep, struct_size) == 0, step_struct_size_first);
ADDCOW_CHECK(offsetof(AddCowWriteStep, kind) == 4, step_kind);
ADDCOW_CHECK(offsetof(AddCowWriteStep, len) == 8, step_len);
ADDCOW_CHECK(offsetof(AddCowWriteStep, generation) == 16, step_generation);
ADDCOW_CHECK(offsetof(AddCowWriteStep, cluster_start) == 24, step_cluster_start);
ADDCOW_CHECK(offsetof(AddCowWriteStep, cluster_end) == 32, step_cluster_end);
ADDCOW_CHECK(offsetof(AddCowWriteStep, head_backing) == 40, step_head_backing);
ADDCOW_CHECK(offsetof(AddCowWriteStep, head_zero) == 48, step_head_zero);
ADDCOW_CHECK(offsetof(AddCowWriteStep, tail_backing) == 56, step_tail_backing);
ADDCOW_CHECK(offsetof(AddCowWriteStep, tail_zero) == 64, step_tail_zero);
ADDCOW_CHECK(offsetof(AddCowWriteStep, txn) == 72, step_txn);
ADDCOW_CHECK(sizeof(void *) != 8 || sizeof(AddCowWriteStep) == 80, step_size_lp64);
ADDCOW_CHECK(offsetof(AddCowHydrateOptions, struct_size) == 0, hydrate_struct_size_first);
ADDCOW_CHECK(offsetof(AddCowHydrateOptions, flags) == 4, hydrate_flags);
ADDCOW_CHECK(offsetof(AddCowHydrateOptions, offset) == 8, hydrate_offset);
ADDCOW_CHECK(offsetof(AddCowHydrateOptions, bytes) == 16, hydrate_bytes);
ADDCOW_CHECK(offsetof(AddCowHydrateOptions, rate) == 24, hydrate_rate);
ADDCOW_CHECK(offsetof(AddCowHydrateOptions, batch) == 32, hydrate_batch);
ADDCOW_CHECK(sizeof(AddCowHydrateOptions) == 40, hydrate_options_size);
ADDCOW_CHECK(offsetof(AddCowJobProgress, struct_size) == 0, progress_struct_size_first);
ADDCOW_CHECK(offsetof(AddCowJobProgress, state) == 4, progress_state);
ADDCOW_CHECK(offsetof(AddCowJobProgress, total_clusters) == 8, progress_total);
ADDCOW_CHECK(offsetof(AddCowJobProgress, done_clusters) == 16, progress_done);
ADDCOW_CHECK(offsetof(AddCowJobProgress, copied_clusters) == 24, progress_copied);
ADDCOW_CHECK(offsetof(AddCowJobProgress, bytes_per_sec) == 32, progress_rate);
ADDCOW_CHECK(offsetof(AddCowJobProgress, error) == 40, progress_error);
ADDCOW_CHECK(sizeof(AddCowJobProgress) == 48, progress_size);

/* Each prototype, spelled out independently of the header. */
struct addcow_prototypes {
    int (*probe)(const uint8_t *, size_t, const char *);
    int (*open)(const char *, uint32_t, AddCowImage **);
    int (*open_ext)(const char *, const AddCowOpenOptions *, AddCowImage **);
    int (*open_io)(const AddCowIo *, const AddCowIo *, const AddCowIo *, uint32_t, AddCowImage **);
    int (*open_io_ext)(const AddCowIo *, const AddCowIo *, const AddCowIo *,
                       const AddCowOpenOptions *, AddCowImage **);
    int (*close)(AddCowImage *);
    int64_t (*get_length)(AddCowImage *);
    int64_t (*get_cluster_size)(AddCowImage *);
    int64_t (*get_backing_length)(AddCowImage *);
    int (*readv)(AddCowImage *, uint64_t, const struct iovec *, int);
    int (*writev)(AddCowImage *, uint64_t, const struct iovec *, int);
    int (*pread)(AddCowImage *, uint64_t, void *, size_t);
    int (*pwrite)(AddCowImage *, uint64_t, const void *, size_t);
    int (*is_allocated)(AddCowImage *, uint64_t, uint64_t, uint64_t *);
    int (*write_zeroes)(AddCowImage *, uint64_t, uint64_t, uint32_t);
    int (*discard)(AddCowImage *, uint64_t, uint64_t);
    int (*block_status)(AddCowImage *, uint64_t, uint64_t, uint64_t *, uint32_t *);
    int (*truncate)(AddCowImage *, uint64_t);
    int (*flush)(AddCowImage *);
    const char *(*last_error)(void);
    const char *(*version)(void);
    int (*create)(const char *, const AddCowCreateOptions *);
    int (*header_read)(const char *, AddCowHeader **);
    int (*header_read_io)(const AddCowIo *, AddCowHeader **);
    uint32_t (*header_layout)(const AddCowHeader *);
    uint32_t (*header_cluster_size)(const AddCowHeader *);
    const char *(*header_image_file)(const AddCowHeader *);
    const char *(*header_backing_file)(const AddCowHeader *);
    const char *(*header_backing_format)(const AddCowHeader *);
    const char *(*header_image_format)(const AddCowHeader *);
    uint64_t (*header_compatible_features)(const AddCowHeader *);
    uint64_t (*header_incompatible_features)(const AddCowHeader *);
    uint64_t (*header_bitmap_offset)(const AddCowHeader *);
    void (*header_free)(AddCowHeader *);
    int (*core_open)(const AddCowIo *, uint64_t, const AddCowOpenOptions *, AddCowCore **);
    int (*core_close)(AddCowCore *);
    int64_t (*core_get_length)(AddCowCore *);
    int64_t (*core_get_cluster_size)(AddCowCore *);
    int (*core_set_backing_length)(AddCowCore *, int64_t);
    int (*core_map)(AddCowCore *, uint64_t, uint64_t, uint64_t *);
    int (*core_begin_write)(AddCowCore *, uint64_t, uint64_t, AddCowWriteStep *);
    int (*core_commit)(AddCowCore *, AddCowTxn *);
    int (*core_abort)(AddCowCore *, AddCowTxn *);
    uint64_t (*core_generation)(AddCowCore *);
    int (*core_writeback_begin)(AddCowCore *, AddCowWriteBack **, uint64_t *);
    int64_t (*writeback_pages)(const AddCowWriteBack *);
    int (*core_writeback_write)(AddCowCore *, AddCowWriteBack *);
    int (*core_writeback_end)(AddCowCore *, AddCowWriteBack *, int);
    int (*hydrate)(AddCowImage *, uint64_t, uint64_t, uint64_t *);
    int (*hydrate_start)(AddCowImage *, const AddCowHydrateOptions *, AddCowJob **);
    int (*job_progress)(AddCowJob *, AddCowJobProgress *);
    int (*job_pause)(AddCowJob *);
    int (*job_resume)(AddCowJob *);
    int (*job_cancel)(AddCowJob *);
    int (*job_wait)(AddCowJob *, int64_t);
    void (*job_free)(AddCowJob *);
    int (*get_allocation)(AddCowImage *, uint64_t *, uint64_t *);
    int (*detach)(const char *, uint32_t);
    int (*commit)(const char *, uint32_t);
    int (*check)(const char *, uint32_t, AddCowCheckResult **);
    int64_t (*check_count)(const AddCowCheckResult *, uint32_t);
    int (*check_finding)(const AddCowCheckResult *, uint64_t, const char **);
    void (*check_free)(AddCowCheckResult *);
    int (*create_io)(const AddCowIo *, const AddCowCreateOptions *);
    int (*core_begin_zero)(AddCowCore *, uint64_t, uint64_t, AddCowWriteStep *);
    int (*core_is_fully_allocated)(AddCowCore *);
    int (*core_set_all_allocated)(AddCowCore *, int);
    int (*core_set_backing_file)(AddCowCore *, const char *, const char *);
    int (*set_backing_file)(AddCowImage *, const char *, const char *);
    int (*core_reload)(AddCowCore *);
};

int main(void)
{
    static const uint8_t magic[12] = { 'A', 'D', 'D', '_', 'C', 'O', 'W', 0xff, 0, 0, 0, 1 };
    struct addcow_prototypes p;
    AddCowImage *img = NULL;
    const char *v;

    p.probe = addcow_probe;
    p.open = addcow_open;
    p.open_ext = addcow_open_ext;
    p.open_io = addcow_open_io;
    p.open_io_ext = addcow_open_io_ext;
    p.close = addcow_close;
    p.get_length = addcow_get_length;
    p.get_cluster_size = addcow_get_cluster_size;
    p.get_backing_length = addcow_get_backing_length;
    p.readv = addcow_readv;
    p.writev = addcow_writev;
    p.pread = addcow_pread;
    p.pwrite = addcow_pwrite;
    p.is_allocated = addcow_is_allocated;
    p.write_zeroes = addcow_write_zeroes;
    p.discard = addcow_discard;
    p.block_status = addcow_block_status;
    p.truncate = addcow_truncate;
    p.flush = addcow_flush;
    p.last_error = addcow_last_error;
    p.version = addcow_version;
    p.create = addcow_create;
    p.header_read = addcow_header_read;
    p.header_read_io = addcow_header_read_io;
    p.header_layout = addcow_header_layout;
    p.header_cluster_size = addcow_header_cluster_size;
    p.header_image_file = addcow_header_image_file;
    p.header_backing_file = addcow_header_backing_file;
    p.header_backing_format = addcow_header_backing_format;
    p.header_image_format = addcow_header_image_format;
    p.header_compatible_features = addcow_header_compatible_features;
    p.header_incompatible_features = addcow_header_incompatible_features;
    p.header_bitmap_offset = addcow_header_bitmap_offset;
    p.header_free = addcow_header_free;
    p.hydrate = addcow_hydrate;
    p.hydrate_start = addcow_hydrate_start;
    p.job_progress = addcow_job_progress;
    p.job_pause = addcow_job_pause;
    p.job_resume = addcow_job_resume;
    p.job_cancel = addcow_job_cancel;
    p.job_wait = addcow_job_wait;
    p.job_free = addcow_job_free;
    p.core_open = addcow_core_open;
    p.core_close = addcow_core_close;
    p.core_get_length = addcow_core_get_length;
    p.core_get_cluster_size = addcow_core_get_cluster_size;
    p.core_set_backing_length = addcow_core_set_backing_length;
    p.core_map = addcow_core_map;
    p.core_begin_write = addcow_core_begin_write;
    p.core_commit = addcow_core_commit;
    p.core_abort = addcow_core_abort;
    p.core_generation = addcow_core_generation;
    p.core_writeback_begin = addcow_core_writeback_begin;
    p.writeback_pages = addcow_writeback_pages;
    p.core_writeback_write = addcow_core_writeback_write;
    p.core_writeback_end = addcow_core_writeback_end;
    p.get_allocation = addcow_get_allocation;
    p.detach = addcow_detach;
    p.commit = addcow_commit;
    p.check = addcow_check;
    p.check_count = addcow_check_count;
    p.check_finding = addcow_check_finding;
    p.check_free = addcow_check_free;
    p.create_io = addcow_create_io;
    p.core_begin_zero = addcow_core_begin_zero;
    p.core_is_fully_allocated = addcow_core_is_fully_allocated;
    p.core_set_all_allocated = addcow_core_set_all_allocated;
    p.core_set_backing_file = addcow_core_set_backing_file;
    p.set_backing_file = addcow_set_backing_file;
    p.core_reload = addcow_core_reload;

    v = p.version();
    if (!v || !*v) {
        fprintf(stderr, "addcow_version() is empty\n");
        return 1;
    }
    if (p.probe(magic, sizeof magic, NULL) != 100 || p.probe(magic, 4, NULL) != 0) {
        fprintf(stderr, "addcow_probe() is wrong\n");
        return 1;
    }
    if (p.open(NULL, 0, &img) >= 0 || img != NULL || strlen(p.last_error()) == 0) {
        fprintf(stderr, "addcow_open(NULL) did not fail with a message\n");
        return 1;
    }
    if (p.close(NULL) != 0) {
        fprintf(stderr, "addcow_close(NULL) is not a no-op\n");
        return 1;
    }
    p.header_free(NULL);
    p.check_free(NULL);
    {
        AddCowCore *core = NULL;
        if (p.core_open(NULL, 0, NULL, &core) != -EINVAL || core != NULL ||
            p.core_close(NULL) != 0) {
            fprintf(stderr, "addcow_core_open(NULL) or addcow_core_close(NULL) is wrong\n");
            return 1;
        }
    }
    printf("addcow.h OK with libaddcow %s\n", v);
    return 0;
}
