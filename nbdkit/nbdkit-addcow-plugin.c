/* nbdkit-addcow-plugin: serves an add-cow image over NBD through libaddcow.
 *
 *   nbdkit ./nbdkit-addcow-plugin.so file=vm.add-cow [backing_fmt=raw|add-cow]
 *          [writethrough=true|false] [readonly=true|false] [confine=true|false]
 *          [direct=true|false] [copy-on-read=true|false]
 *          [hydrate=true|false] [hydrate-rate=SIZE]
 *
 * The image is opened, and locked as QEMU locks its images, once, in .get_ready: before
 * nbdkit serves anything (and before it forks into the background, so that the error reaches
 * the user). A server started on an image that another program holds read-write -- another
 * nbdkit, QEMU, a libaddcow user -- fails at once with the library's EBUSY message, rather
 * than at every connection. The locks are OFD locks: they belong to the open file
 * descriptions, which the daemonized child shares with the parent that exits, so they last
 * until the server exits (.cleanup / .unload close the image, flushing it).
 *
 * nbdkit tells a plugin about -r only per connection, after .get_ready: the image is opened
 * read-write unless readonly=true, which takes read locks only (other readers may share the
 * image) and serves it read-only. With -r alone the server serves read-only but holds the
 * write locks.
 *
 * Every connection shares that ONE image handle: two handles on the same image would each keep
 * a bitmap and overwrite each other's bits (the locks refuse that anyway). libaddcow is safe for
 * parallel calls on one handle, so the thread model is PARALLEL; and since a flush on any
 * connection flushes that shared handle, i.e. every completed write of every connection,
 * multi-conn is safe to advertise. When the last connection closes, the handle is flushed.
 *
 * hydrate=true starts libaddcow's background hydration job on that handle in .after_fork (a
 * thread started before nbdkit forks into the background would not exist in the server): it
 * copies the backing file into the image file while clients read and write, at most
 * hydrate-rate bytes per second, flushing every second, and once done the image file stands
 * alone. .cleanup / .unload stop it (within one batch) before closing the image; a server
 * started again resumes where it stopped (the bitmap is the progress).
 */

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-plugin.h>

#include <addcow.h>

static char *filename;
static uint32_t open_flags;      /* ADDCOW_OPEN_* from the keys, without RDWR */
static bool readonly;            /* readonly=true */

static AddCowImage *image;       /* opened by .get_ready, closed by .cleanup or .unload */

static bool hydrate;             /* hydrate=true */
static uint64_t hydrate_rate;    /* hydrate-rate=, bytes per second; 0: no limit */
static AddCowJob *job;           /* started by .after_fork, freed before the image closes */

static pthread_mutex_t users_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned users;           /* open connections; guarded by users_lock */


/* Reports a failed libaddcow call to nbdkit: errno for the client, message for the log. */
static int
fail (int r)
{
  nbdkit_set_error (-r);
  nbdkit_error ("%s", addcow_last_error ());
  return -1;
}

/* Stops the hydration job (cancels it unless it finished, waits for its thread), reporting
 * how far it got; idempotent. */
static void
stop_job (void)
{
  AddCowJobProgress p = { .struct_size = sizeof p };
  int r;

  if (job == NULL)
    return;
  addcow_job_cancel (job);
  r = addcow_job_wait (job, -1);
  if (r < 0 && r != -ECANCELED)
    nbdkit_error ("hydrating %s: %s", filename, addcow_last_error ());
  if (addcow_job_progress (job, &p) == 0)
    nbdkit_debug ("hydration of %s: %" PRIu64 " of %" PRIu64 " clusters (state %u)",
                  filename, p.done_clusters, p.total_clusters, p.state);
  addcow_job_free (job);
  job = NULL;
}

/* Closes (and so flushes) the image; idempotent. */
static void
close_image (void)
{
  stop_job ();
  if (image != NULL) {
    int r = addcow_close (image);
    image = NULL;
    if (r < 0)
      nbdkit_error ("closing %s: %s", filename, addcow_last_error ());
  }
}

static void
plugin_cleanup (void)
{
  close_image ();
}

/* .cleanup is not reached when nbdkit stops before serving; .unload always is. */
static void
plugin_unload (void)
{
  close_image ();
  free (filename);
}

/* Sets or clears `flag` in open_flags from a boolean value. */
static int
config_flag (const char *value, uint32_t flag)
{
  int b = nbdkit_parse_bool (value);
  if (b == -1)
    return -1;
  open_flags = b ? open_flags | flag : open_flags & ~flag;
  return 0;
}

static int
plugin_config (const char *key, const char *value)
{
  if (strcmp (key, "file") == 0) {
    free (filename);
    filename = nbdkit_absolute_path (value);
    return filename ? 0 : -1;
  }
  if (strcmp (key, "backing_fmt") == 0) {
    if (strcmp (value, "raw") == 0)
      open_flags &= ~ADDCOW_OPEN_BACKING_ADDCOW;
    else if (strcmp (value, "add-cow") == 0)
      open_flags |= ADDCOW_OPEN_BACKING_ADDCOW;
    else {
      nbdkit_error ("backing_fmt must be raw or add-cow, not '%s'", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "writethrough") == 0)
    return config_flag (value, ADDCOW_OPEN_WRITETHROUGH);
  if (strcmp (key, "confine") == 0)
    return config_flag (value, ADDCOW_OPEN_CONFINE);
  if (strcmp (key, "direct") == 0)
    return config_flag (value, ADDCOW_OPEN_DIRECT);
  if (strcmp (key, "copy-on-read") == 0)
    return config_flag (value, ADDCOW_OPEN_COPY_ON_READ);
  if (strcmp (key, "hydrate") == 0) {
    int b = nbdkit_parse_bool (value);
    if (b == -1)
      return -1;
    hydrate = b;
    return 0;
  }
  if (strcmp (key, "hydrate-rate") == 0) {
    int64_t r = nbdkit_parse_size (value);
    if (r == -1)
      return -1;
    hydrate_rate = (uint64_t) r;
    return 0;
  }
  if (strcmp (key, "readonly") == 0) {
    int b = nbdkit_parse_bool (value);
    if (b == -1)
      return -1;
    readonly = b;
    return 0;
  }
  nbdkit_error ("unknown parameter '%s'", key);
  return -1;
}

static int
plugin_config_complete (void)
{
  if (filename == NULL) {
    nbdkit_error ("the file parameter (the .add-cow file) is required");
    return -1;
  }
  if (readonly && (hydrate || (open_flags & ADDCOW_OPEN_COPY_ON_READ))) {
    nbdkit_error ("hydrate=true and copy-on-read=true write the image: not with readonly=true");
    return -1;
  }
  return 0;
}

#define plugin_config_help \
  "file=<FILENAME>     (required) The .add-cow file.\n" \
  "backing_fmt=raw|add-cow       Format of its backing file (default raw); layout 1\n" \
  "                              only: a layout-2 header records it, and that wins.\n" \
  "writethrough=true|false       Make every write durable on return (default false).\n" \
  "readonly=true|false           Open read-only: read locks, so other readers may share\n" \
  "                              the image; served read-only. Use it with -r (without it\n" \
  "                              the server holds write locks: the plugin opens the image\n" \
  "                              at startup, before nbdkit tells it about -r).\n" \
  "confine=true|false            Refuse header names that leave the directory of the\n" \
  "                              .add-cow file naming them (absolute, .., symlinks out):\n" \
  "                              for images you did not make (default false).\n" \
  "direct=true|false             Direct I/O (O_DIRECT, QEMU's cache=none): bypass the\n" \
  "                              host's page cache; the file system must support it\n" \
  "                              (default false).\n" \
  "copy-on-read=true|false       Reads of the backing file also copy what they read into\n" \
  "                              the image file (default false).\n" \
  "hydrate=true|false            Copy the whole backing file into the image file in the\n" \
  "                              background while serving; resumes where a previous run\n" \
  "                              stopped (default false).\n" \
  "hydrate-rate=SIZE             Most bytes hydrated per second, e.g. 50M (default: no\n" \
  "                              limit)."

/* Opens and locks the image before serving: a conflict fails the server at startup. */
static int
plugin_get_ready (void)
{
  int r = addcow_open (filename, open_flags | (readonly ? 0 : ADDCOW_OPEN_RDWR), &image);
  if (r < 0) {
    if (r == -EACCES || r == -EROFS)
      nbdkit_error ("%s (readonly=true opens it read-only)", addcow_last_error ());
    else
      nbdkit_error ("%s", addcow_last_error ());
    return -1;
  }
  return 0;
}

/* Starts the hydration job in the process that serves (after nbdkit forked, if it did). */
static int
plugin_after_fork (void)
{
  AddCowHydrateOptions o = { .struct_size = sizeof o, .rate = hydrate_rate };
  int r;

  if (!hydrate)
    return 0;
  r = addcow_hydrate_start (image, &o, &job);
  if (r < 0) {
    nbdkit_error ("hydrating %s: %s", filename, addcow_last_error ());
    return -1;
  }
  return 0;
}

static void *
plugin_open (int nbdkit_readonly)
{
  (void) nbdkit_readonly;   /* nbdkit itself refuses writes under -r */
  pthread_mutex_lock (&users_lock);
  users++;
  pthread_mutex_unlock (&users_lock);
  return image;
}

/* The last connection gone: its writes become durable even if the client did not flush. */
static void
plugin_close (void *handle)
{
  pthread_mutex_lock (&users_lock);
  if (--users == 0) {
    int r = addcow_flush (handle);
    if (r < 0)
      nbdkit_error ("flushing %s: %s", filename, addcow_last_error ());
  }
  pthread_mutex_unlock (&users_lock);
}

static int
plugin_can_write (void *handle)
{
  (void) handle;
  return !readonly;
}

static int64_t
plugin_get_size (void *handle)
{
  int64_t r = addcow_get_length (handle);
  return r < 0 ? fail ((int) r) : r;
}

/* can_multi_conn, can_flush, can_zero, can_fast_zero, can_trim, can_extents: all supported
 * (a fast zero that would have to write zeroes fails with ENOTSUP, as NBD asks). */
static int
plugin_can_yes (void *handle)
{
  (void) handle;
  return 1;
}

static int
plugin_can_fua (void *handle)
{
  (void) handle;
  return NBDKIT_FUA_NATIVE;
}

static int
plugin_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
              uint32_t flags)
{
  int r;

  (void) flags;
  r = addcow_pread (handle, offset, buf, count);
  return r < 0 ? fail (r) : 0;
}

/* FUA: the write is durable before the reply. */
static int
finish_write (void *handle, uint32_t flags)
{
  int r = 0;

  if (flags & NBDKIT_FLAG_FUA)
    r = addcow_flush (handle);
  return r < 0 ? fail (r) : 0;
}

static int
plugin_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
               uint32_t flags)
{
  int r = addcow_pwrite (handle, offset, buf, count);
  return r < 0 ? fail (r) : finish_write (handle, flags);
}

static int
plugin_flush (void *handle, uint32_t flags)
{
  int r;

  (void) flags;
  r = addcow_flush (handle);
  return r < 0 ? fail (r) : 0;
}

/* Write zeroes: addcow_write_zeroes punches (NBD_CMD_FLAG_NO_HOLE unset: may trim) or zeroes
 * in place the whole clusters, allocating them without copying the backing file, and writes
 * zeroes into parts of clusters. A fast zero (NBD_CMD_FLAG_FAST_ZERO) is ADDCOW_ZERO_NO_FALLBACK:
 * -ENOTSUP, before anything changed, when zeroes would have to be written. */
static int
plugin_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  uint32_t zflags = 0;
  int r;

  if (flags & NBDKIT_FLAG_MAY_TRIM)
    zflags |= ADDCOW_ZERO_MAY_UNMAP;
  if (flags & NBDKIT_FLAG_FAST_ZERO)
    zflags |= ADDCOW_ZERO_NO_FALLBACK;
  r = addcow_write_zeroes (handle, offset, count, zflags);
  if (r == -ENOTSUP && (flags & NBDKIT_FLAG_FAST_ZERO)) {
    /* The client falls back to writing zeroes itself: not an error worth logging. */
    nbdkit_set_error (ENOTSUP);
    return -1;
  }
  return r < 0 ? fail (r) : finish_write (handle, flags);
}

/* Trim: the whole clusters are discarded -- punched out of the image file and marked allocated
 * without copying, so that they read zeroes rather than backing data again. Parts of clusters
 * are left as they are (NBD trim is advisory). */
static int
plugin_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  int r = addcow_discard (handle, offset, count);
  return r < 0 ? fail (r) : finish_write (handle, flags);
}

/* Block status: data where the bytes live in the image file or the backing file; a zero hole
 * where they read zeroes (an allocated hole of the image file, or unallocated past the backing
 * file's end), as QEMU shows qcow2 zero clusters. */
static int
plugin_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
                struct nbdkit_extents *extents)
{
  uint64_t end = offset + count;

  while (offset < end) {
    uint64_t n;
    uint32_t status, type;
    int r = addcow_block_status (handle, offset, end - offset, &n, &status);
    if (r < 0)
      return fail (r);
    if (n == 0)
      break;
    type = (status & ADDCOW_STATUS_ZERO) ? NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO : 0;
    if (nbdkit_add_extent (extents, offset, n, type) == -1)
      return -1;
    offset += n;
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
  }
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name              = "addcow",
  .longname          = "add-cow image (raw image with a backing file) via libaddcow",
  .version           = "0.1.0",
  .unload            = plugin_unload,
  .config            = plugin_config,
  .config_complete   = plugin_config_complete,
  .config_help       = plugin_config_help,
  .magic_config_key  = "file",
  .get_ready         = plugin_get_ready,
  .after_fork        = plugin_after_fork,
  .cleanup           = plugin_cleanup,
  .open              = plugin_open,
  .close             = plugin_close,
  .get_size          = plugin_get_size,
  .can_write         = plugin_can_write,
  .can_multi_conn    = plugin_can_yes,
  .can_fua           = plugin_can_fua,
  .can_flush         = plugin_can_yes,
  .can_zero          = plugin_can_yes,
  .can_fast_zero     = plugin_can_yes,
  .can_trim          = plugin_can_yes,
  .can_extents       = plugin_can_yes,
  .pread             = plugin_pread,
  .pwrite            = plugin_pwrite,
  .flush             = plugin_flush,
  .zero              = plugin_zero,
  .trim              = plugin_trim,
  .extents           = plugin_extents,
  .errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN (plugin)
