/* The runtime of a lossc ahead-of-time library, compiled into every library with the driver lossc
 * generates for its losses (backend/aot/driver.rs) and the kernels' object (backend/jit/object.rs).
 *
 * It does what the JIT's run.rs does for a call, in C and with nothing but libc, libm and pthreads: the
 * buffers of the plan (kept from one call to the next while the sizes stay the same), the groups in
 * order, each one's outermost loop handed out in chunks over a kept pool of worker threads
 * (lossc_rt_chunk_rows: the JIT's chunk_rows), a split sum's parts added in chunk order in double, so
 * results are bit-identical for any number of threads, one row of scratch per worker for row-private
 * tensors, and the first bounds-check report in chunk order. It also defines the math helpers the
 * generated code calls (the JIT's are Rust's f32/f64 methods, which call the same libm). Every symbol
 * but the losses' entry points is hidden: libraries of several files load side by side. */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LOSSC_HIDDEN __attribute__((visibility("hidden")))
#define LOSSC_EXPORT __attribute__((visibility("default")))

/* The status codes of include/lossc.h. */
enum {
    LOSSC_RT_OK = 0,
    LOSSC_RT_INPUT_ERROR = 2,
    LOSSC_RT_SHAPE_ERROR = 3,
    LOSSC_RT_LABEL_ERROR = 4,
    LOSSC_RT_HYPER_ERROR = 5,
    LOSSC_RT_ARGUMENT_ERROR = 6,
    LOSSC_RT_MEMORY_ERROR = 8
};

/* The math helpers of the generated code (backend/jit/mod.rs, `math!`). */
LOSSC_HIDDEN float lossc_logf(float x) { return logf(x); }
LOSSC_HIDDEN float lossc_log1pf(float x) { return log1pf(x); }
LOSSC_HIDDEN float lossc_tanhf(float x) { return tanhf(x); }
LOSSC_HIDDEN float lossc_expm1f(float x) { return expm1f(x); }
LOSSC_HIDDEN float lossc_atanf(float x) { return atanf(x); }
LOSSC_HIDDEN float lossc_cosf(float x) { return cosf(x); }
LOSSC_HIDDEN float lossc_sinf(float x) { return sinf(x); }
LOSSC_HIDDEN float lossc_acosf(float x) { return acosf(x); }
LOSSC_HIDDEN double lossc_log(double x) { return log(x); }
LOSSC_HIDDEN float lossc_powf(float x, float y) { return powf(x, y); }
/* prims::softplus in f64: max(x, 0) + log1p(exp(-|x|)). */
LOSSC_HIDDEN float lossc_softplusf(float x) {
    double d = (double)x;
    return (float)(fmax(d, 0.0) + log1p(exp(-fabs(d))));
}

/* A group's native function: buffer table, sizes, hyperparameters, error report, rows lo..hi, partial
 * sums (backend/jit/mod.rs: NestFn). */
typedef void (*lossc_rt_nest)(void *const *ptrs, const int64_t *sizes, const double *hypers, int64_t *err,
                              int64_t lo, int64_t hi, float *partial);

/* A group that is a matrix product (loops::Contraction), run as sgemm (gemm.c): its operands' buffers,
 * whether a GEMM reads each as the transpose of the matrix the product needs
 * (Contraction::reads_transposed), whether it reads one buffer both ways (L = Rᵀ), the buffer that must
 * hold only finite values for the dense product to equal the masked sum (-1: none), and whether its terms
 * are squared differences (pairwise squared distances) instead of products. */
struct lossc_rt_product {
    int left, left_transposed, right, right_transposed, symmetric, finite, distance;
};

/* One product at a call's sizes: `c` (rows x columns, row-major) = a (rows x depth) · b (depth x columns),
 * each operand addressed by its element strides between rows and between columns. */
struct lossc_rt_matmul {
    int64_t rows, depth, columns;
    const float *a;
    int64_t rsa, csa;
    const float *b;
    int64_t rsb, csb;
    float *c;
    int symmetric, distance;
};

/* One group of a kernel (what backend/jit/run.rs reads of the plan and the schedule). */
struct lossc_rt_group {
    const struct lossc_rt_product *product; /* NULL unless the group is a matrix product */
    int output;                             /* a product's buffer */
    lossc_rt_nest fn;
    int parallel;          /* its chunks may run on several threads */
    int column_sum;        /* it sums columns in tiles */
    int tiled_rows;        /* it runs an elementwise nest in tiles of columns over its rows */
    int members;           /* partial slots per chunk of a split sum */
    int split_first;       /* the first member whose total the parts make, or -1: not a split sum */
    const int *split_buffers; /* the buffers of members split_first.. */
    int n_private;         /* its row-private buffers */
    const int *private_buffers;
};

enum { LOSSC_RT_INPUT = 0, LOSSC_RT_DEFINED = 1, LOSSC_RT_PRIVATE = 2, LOSSC_RT_GUEST = 3 };

/* The extents of a call (from the sizes of its dimensions): each buffer's elements and the elements of
 * one row (all but its first axis), each group's outer extent, points per row and split extent (-1:
 * none), and a product's rows, depth and columns (three per group). */
struct lossc_rt_extents {
    int64_t *buffer_elements;
    int64_t *buffer_row;
    int64_t *group_outer;
    int64_t *group_row;
    int64_t *group_split;
    int64_t *product_dims;
};

/* gemm.c: a group's product at a call's buffers (0: its loops must run), its block of output rows, and the
 * rows of a block. */
static int lossc_rt_matmul_of(const struct lossc_rt_product *p, void *const *ptrs, const int64_t *dims,
                              const struct lossc_rt_extents *ext, float *out, struct lossc_rt_matmul *mm);
static int lossc_rt_matmul_block(const struct lossc_rt_matmul *mm, int64_t lo, int64_t hi);
static int64_t lossc_rt_matmul_block_rows(const struct lossc_rt_matmul *mm);

struct lossc_rt_kernel {
    int n_buffers, n_dims, n_hypers, n_groups;
    const struct lossc_rt_group *groups;
    const int *kind;       /* per buffer: LOSSC_RT_INPUT, _DEFINED, _PRIVATE or _GUEST */
    const int *host;       /* per buffer: the buffer a guest lives in */
    const int *elem_bytes; /* per buffer */
    void (*extents)(const int64_t *sizes, struct lossc_rt_extents *out);
    /* The message of a bounds-check report (load node + 1, axis, value). */
    void (*index_error)(const int64_t *sizes, const int64_t *err, char *msg, size_t n);
    /* The buffers kept from the last call, and its sizes (a call that finds them taken allocates its
     * own). */
    pthread_mutex_t *kept_lock;
    void **kept;
    int64_t *kept_sizes;
    int *kept_valid;
};

LOSSC_HIDDEN int lossc_rt_fail(char *error, size_t error_size, int code, const char *format, ...)
    __attribute__((format(printf, 4, 5)));
LOSSC_HIDDEN int lossc_rt_fail(char *error, size_t error_size, int code, const char *format, ...) {
    if (error && error_size) {
        va_list args;
        va_start(args, format);
        vsnprintf(error, error_size, format, args);
        va_end(args);
    }
    return code;
}

/* "[i, j, k]": the row-major position of a flat offset in a shape, as the command line prints it. */
LOSSC_HIDDEN void lossc_rt_position(int64_t flat, const int64_t *shape, int rank, char *out, size_t n) {
    int64_t pos[16] = {0};
    for (int k = rank - 1; k >= 0 && k < 16; k--) {
        if (shape[k] > 0) {
            pos[k] = flat % shape[k];
            flat /= shape[k];
        }
    }
    size_t at = 0;
    at += (size_t)snprintf(out + at, n - at, "[");
    for (int k = 0; k < rank && k < 16 && at < n; k++) {
        at += (size_t)snprintf(out + at, n - at, k ? ", %lld" : "%lld", (long long)pos[k]);
    }
    if (at < n) snprintf(out + at, n - at, "]");
}

/* Rows per chunk (backend/jit/build.rs, chunk_rows; the constants are the JIT's). */
static int64_t lossc_rt_chunk_rows(int64_t outer, int64_t row, int column_sum, int tiled_rows, int64_t threads) {
    int64_t chunk = LOSSC_RT_MIN_CHUNK_ELEMENTS / (row > 1 ? row : 1);
    if (chunk < 1) chunk = 1;
    if (tiled_rows && chunk < LOSSC_RT_TILED_CHUNK_ROWS) chunk = LOSSC_RT_TILED_CHUNK_ROWS;
    if (!column_sum) return chunk;
    int64_t t = threads > 1 ? threads : 1;
    int64_t per_thread = (outer + t - 1) / t;
    int64_t tile = per_thread < LOSSC_RT_COLUMN_TILE ? per_thread : LOSSC_RT_COLUMN_TILE;
    if (tile > chunk) chunk = tile;
    int64_t block = LOSSC_RT_COLUMN_BLOCK_COLUMNS;
    return (chunk + block - 1) / block * block;
}

/* One group's run in one call: what each chunk needs. */
struct lossc_rt_job {
    const struct lossc_rt_kernel *kernel;
    const struct lossc_rt_group *group;
    void *const *const *tables; /* per worker (the last for any later worker) */
    int n_tables;
    const int64_t *sizes;
    const double *hypers;
    int64_t outer, chunk, n_chunks;
    float *partials;
    int64_t *errs; /* three per chunk */
    const struct lossc_rt_matmul *matmul; /* a product's blocks, instead of the group's function */
    atomic_int failed;                    /* a block found no memory to pack into */
    atomic_llong next;
};

static void lossc_rt_run_chunk(struct lossc_rt_job *job, int64_t c, int worker) {
    int64_t lo = c * job->chunk;
    int64_t hi = lo + job->chunk < job->outer ? lo + job->chunk : job->outer;
    if (job->matmul) {
        if (!lossc_rt_matmul_block(job->matmul, lo, hi)) atomic_store(&job->failed, 1);
        return;
    }
    int t = worker < job->n_tables ? worker : job->n_tables - 1;
    int per_chunk = job->group->split_first >= 0 ? job->group->members : 1;
    job->group->fn(job->tables[t], job->sizes, job->hypers, job->errs + 3 * c, lo, hi,
                   job->partials + c * per_chunk);
}

/* Takes chunks until none are left. */
static void lossc_rt_work(struct lossc_rt_job *job, int worker) {
    for (;;) {
        int64_t c = atomic_fetch_add(&job->next, 1);
        if (c >= job->n_chunks) return;
        lossc_rt_run_chunk(job, c, worker);
    }
}

/* The worker pool: started on first use, grown to the largest thread count asked for, kept for the
 * process. One group runs on it at a time. */
static struct {
    pthread_mutex_t lock;   /* the pool's state */
    pthread_cond_t posted;  /* a job was posted */
    pthread_cond_t done;    /* a worker finished its part of the job */
    pthread_mutex_t serial; /* held by the thread whose group runs on the pool */
    int started;
    unsigned long generation;
    struct lossc_rt_job *job;
    int helpers;  /* workers taking part in the job (the first `helpers`) */
    int finished; /* of them, how many are done */
    unsigned long born[256]; /* per worker: the generation when it was started (it waits for a later one) */
} lossc_rt_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
                   PTHREAD_MUTEX_INITIALIZER, 0, 0, NULL, 0, 0, {0}};

static void *lossc_rt_worker(void *arg) {
    int index = (int)(intptr_t)arg;
    pthread_mutex_lock(&lossc_rt_pool.lock);
    /* A worker started for a job takes part in it, though it may first run after it was posted. */
    unsigned long seen = lossc_rt_pool.born[index];
    for (;;) {
        while (lossc_rt_pool.generation == seen) pthread_cond_wait(&lossc_rt_pool.posted, &lossc_rt_pool.lock);
        seen = lossc_rt_pool.generation;
        if (index >= lossc_rt_pool.helpers) continue;
        struct lossc_rt_job *job = lossc_rt_pool.job;
        pthread_mutex_unlock(&lossc_rt_pool.lock);
        lossc_rt_work(job, 1 + index);
        pthread_mutex_lock(&lossc_rt_pool.lock);
        lossc_rt_pool.finished++;
        pthread_cond_signal(&lossc_rt_pool.done);
    }
    return NULL;
}

/* Runs a job's chunks on the calling thread and up to `threads - 1` workers. */
static void lossc_rt_parallel(struct lossc_rt_job *job, int threads) {
    pthread_mutex_lock(&lossc_rt_pool.serial);
    pthread_mutex_lock(&lossc_rt_pool.lock);
    while (lossc_rt_pool.started < threads - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        lossc_rt_pool.born[lossc_rt_pool.started] = lossc_rt_pool.generation;
        int failed = pthread_create(&t, &attr, lossc_rt_worker, (void *)(intptr_t)lossc_rt_pool.started);
        pthread_attr_destroy(&attr);
        if (failed) break; /* fewer helpers: the chunks are the same, so are the results */
        lossc_rt_pool.started++;
    }
    int helpers = threads - 1 < lossc_rt_pool.started ? threads - 1 : lossc_rt_pool.started;
    lossc_rt_pool.job = job;
    lossc_rt_pool.helpers = helpers;
    lossc_rt_pool.finished = 0;
    lossc_rt_pool.generation++;
    pthread_cond_broadcast(&lossc_rt_pool.posted);
    pthread_mutex_unlock(&lossc_rt_pool.lock);
    lossc_rt_work(job, 0);
    pthread_mutex_lock(&lossc_rt_pool.lock);
    while (lossc_rt_pool.finished < helpers) pthread_cond_wait(&lossc_rt_pool.done, &lossc_rt_pool.lock);
    lossc_rt_pool.job = NULL;
    pthread_mutex_unlock(&lossc_rt_pool.lock);
    pthread_mutex_unlock(&lossc_rt_pool.serial);
}

/* Runs a product's blocks of rows (in any order, on any threads: each block's arithmetic is its own). */
static int lossc_rt_product(const struct lossc_rt_matmul *mm, int threads, int *out_of_memory) {
    int64_t chunk = lossc_rt_matmul_block_rows(mm);
    struct lossc_rt_job job = {
        .outer = mm->rows,
        .chunk = chunk,
        .n_chunks = (mm->rows + chunk - 1) / chunk,
        .matmul = mm,
    };
    atomic_init(&job.next, 0);
    atomic_init(&job.failed, 0);
    if (threads > 1 && job.n_chunks > 1) {
        lossc_rt_parallel(&job, threads);
    } else {
        for (int64_t c = 0; c < job.n_chunks; c++) lossc_rt_run_chunk(&job, c, 0);
    }
    if (atomic_load(&job.failed)) *out_of_memory = 1;
    return 0;
}

/* Runs one group; 0, or the index of the first chunk (in chunk order) whose bounds check failed, plus
 * one, with its report in err. */
static int lossc_rt_group(const struct lossc_rt_kernel *k, int g, void **ptrs, const int64_t *sizes,
                          const double *hypers, const struct lossc_rt_extents *ext, int threads, int64_t *err,
                          int *out_of_memory) {
    const struct lossc_rt_group *group = &k->groups[g];
    struct lossc_rt_matmul mm;
    if (group->product && lossc_rt_matmul_of(group->product, ptrs, ext->product_dims + 3 * g, ext,
                                             ptrs[group->output], &mm))
        return lossc_rt_product(&mm, threads, out_of_memory);
    int64_t outer, chunk;
    if (group->split_first >= 0) {
        outer = ext->group_split[g] > 0 ? ext->group_split[g] : 0;
        chunk = LOSSC_RT_SPLIT_CHUNK;
    } else {
        outer = ext->group_outer[g] > 0 ? ext->group_outer[g] : 0;
        chunk = lossc_rt_chunk_rows(outer, ext->group_row[g], group->column_sum, group->tiled_rows, threads);
    }
    int64_t n_chunks = (outer + chunk - 1) / chunk;
    int per_chunk = group->split_first >= 0 ? group->members : 1;
    int64_t slots = n_chunks > 0 ? n_chunks : 1;
    /* Row-private buffers: one row of scratch per worker (whole cache lines), each worker's table
     * pointing there. */
    int workers = group->n_private ? threads + 1 : 0;
    size_t per_worker = 0;
    for (int p = 0; p < group->n_private; p++) {
        int b = group->private_buffers[p];
        int64_t row = ext->buffer_row[b] > 0 ? ext->buffer_row[b] : 0;
        per_worker += ((size_t)row * (size_t)k->elem_bytes[b] + 63) / 64 * 64;
    }
    float *partials = calloc((size_t)(slots * per_chunk), sizeof(float));
    int64_t *errs = calloc((size_t)(slots * 3), sizeof(int64_t));
    unsigned char *scratch = workers ? aligned_alloc(64, per_worker * (size_t)workers + 64) : NULL;
    void **tables = workers ? malloc(sizeof(void *) * (size_t)k->n_buffers * (size_t)workers) : NULL;
    void *const **table_list = malloc(sizeof(void *) * (size_t)(workers ? workers : 1));
    if (!partials || !errs || !table_list || (workers && (!scratch || !tables))) {
        free(partials), free(errs), free(scratch), free(tables), free(table_list);
        *out_of_memory = 1;
        return 0;
    }
    if (workers) {
        memset(scratch, 0, per_worker * (size_t)workers);
        for (int w = 0; w < workers; w++) {
            void **table = tables + (size_t)w * (size_t)k->n_buffers;
            memcpy(table, ptrs, sizeof(void *) * (size_t)k->n_buffers);
            size_t at = (size_t)w * per_worker;
            for (int p = 0; p < group->n_private; p++) {
                int b = group->private_buffers[p];
                int64_t row = ext->buffer_row[b] > 0 ? ext->buffer_row[b] : 0;
                table[b] = scratch + at;
                at += ((size_t)row * (size_t)k->elem_bytes[b] + 63) / 64 * 64;
            }
            table_list[w] = table;
        }
    } else {
        table_list[0] = ptrs;
    }
    struct lossc_rt_job job = {
        .kernel = k,
        .group = group,
        .tables = table_list,
        .n_tables = workers ? workers : 1,
        .sizes = sizes,
        .hypers = hypers,
        .outer = outer,
        .chunk = chunk,
        .n_chunks = n_chunks,
        .partials = partials,
        .errs = errs,
    };
    atomic_init(&job.next, 0);
    atomic_init(&job.failed, 0);
    int parallel = group->parallel || group->split_first >= 0;
    if (threads > 1 && n_chunks > 1 && parallel) {
        lossc_rt_parallel(&job, threads);
    } else {
        for (int64_t c = 0; c < n_chunks; c++) {
            lossc_rt_run_chunk(&job, c, 0);
            if (errs[3 * c]) break;
        }
    }
    if (group->split_first >= 0) {
        for (int slot = group->split_first; slot < group->members; slot++) {
            double total = 0.0;
            for (int64_t c = 0; c < n_chunks; c++) total += (double)partials[c * per_chunk + slot];
            *(float *)ptrs[group->split_buffers[slot - group->split_first]] = (float)total;
        }
    }
    int failed = 0;
    for (int64_t c = 0; c < n_chunks; c++) {
        if (errs[3 * c]) {
            memcpy(err, errs + 3 * c, 3 * sizeof(int64_t));
            failed = 1;
            break;
        }
    }
    free(partials), free(errs), free(scratch), free(tables), free(table_list);
    return failed;
}

/* One call of a kernel whose inputs were checked: `ptrs` holds the inputs' addresses and, where the
 * caller gave them, the results' (NULL elsewhere). */
LOSSC_HIDDEN int lossc_rt_call(const struct lossc_rt_kernel *k, void **ptrs, const int64_t *sizes,
                               const double *hypers, int threads, char *error, size_t error_size) {
    if (threads <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        threads = cores > 0 ? (int)cores : 1;
    }
    if (threads > 256) threads = 256;
    int64_t *numbers = calloc((size_t)(2 * k->n_buffers + 6 * k->n_groups), sizeof(int64_t));
    if (!numbers) return lossc_rt_fail(error, error_size, LOSSC_RT_MEMORY_ERROR, "out of memory");
    struct lossc_rt_extents ext = {numbers, numbers + k->n_buffers, numbers + 2 * k->n_buffers,
                                   numbers + 2 * k->n_buffers + k->n_groups,
                                   numbers + 2 * k->n_buffers + 2 * k->n_groups,
                                   numbers + 2 * k->n_buffers + 3 * k->n_groups};
    k->extents(sizes, &ext);
    /* The kept buffers where this call has them (same sizes), else buffers of its own. */
    int kept = pthread_mutex_trylock(k->kept_lock) == 0;
    void **owned = kept ? k->kept : calloc((size_t)k->n_buffers, sizeof(void *));
    if (!owned) {
        free(numbers);
        return lossc_rt_fail(error, error_size, LOSSC_RT_MEMORY_ERROR, "out of memory");
    }
    if (kept && (!*k->kept_valid || memcmp(k->kept_sizes, sizes, sizeof(int64_t) * (size_t)k->n_dims))) {
        for (int b = 0; b < k->n_buffers; b++) free(k->kept[b]), k->kept[b] = NULL;
        *k->kept_valid = 0;
    }
    size_t needed = 0;
    for (int b = 0; b < k->n_buffers; b++) {
        if (k->kind[b] != LOSSC_RT_DEFINED || owned[b]) continue;
        size_t bytes = (size_t)(ext.buffer_elements[b] > 0 ? ext.buffer_elements[b] : 0) * (size_t)k->elem_bytes[b];
        needed += bytes;
        owned[b] = calloc(bytes ? bytes : 1, 1);
        if (!owned[b]) {
            for (int c = 0; c < k->n_buffers; c++) free(owned[c]), owned[c] = NULL;
            if (kept) pthread_mutex_unlock(k->kept_lock);
            else free(owned);
            free(numbers);
            return lossc_rt_fail(error, error_size, LOSSC_RT_MEMORY_ERROR,
                                 "out of memory: the call needs more than %zu bytes of buffers", needed);
        }
    }
    if (kept) {
        memcpy(k->kept_sizes, sizes, sizeof(int64_t) * (size_t)k->n_dims);
        *k->kept_valid = 1;
    }
    for (int b = 0; b < k->n_buffers; b++) {
        if (k->kind[b] == LOSSC_RT_DEFINED && !ptrs[b]) ptrs[b] = owned[b];
    }
    /* A tensor that lives in its host's buffer is addressed as the host. */
    for (int b = 0; b < k->n_buffers; b++) {
        if (k->kind[b] == LOSSC_RT_GUEST) ptrs[b] = ptrs[k->host[b]];
    }
    int status = LOSSC_RT_OK;
    for (int g = 0; g < k->n_groups; g++) {
        int64_t err[3] = {0, 0, 0};
        int out_of_memory = 0;
        if (lossc_rt_group(k, g, ptrs, sizes, hypers, &ext, threads, err, &out_of_memory)) {
            if (error && error_size) k->index_error(sizes, err, error, error_size);
            status = LOSSC_RT_LABEL_ERROR;
            break;
        }
        if (out_of_memory) {
            status = lossc_rt_fail(error, error_size, LOSSC_RT_MEMORY_ERROR, "out of memory");
            break;
        }
    }
    if (kept) {
        pthread_mutex_unlock(k->kept_lock);
    } else {
        for (int b = 0; b < k->n_buffers; b++) free(owned[b]);
        free(owned);
    }
    free(numbers);
    return status;
}

/* Arithmetic of the generated extents: at least `floor`, a product saturating at INT64_MAX, a maximum. */
static inline int64_t lossc_rt_at_least(int64_t x, int64_t floor) { return x > floor ? x : floor; }
static inline int64_t lossc_rt_mul(int64_t a, int64_t b) {
    int64_t p;
    return __builtin_mul_overflow(a, b, &p) ? INT64_MAX : p;
}
static inline int64_t lossc_rt_max(int64_t a, int64_t b) { return a > b ? a : b; }

/* An element count, saturating (as the checks' u128). */
static inline unsigned __int128 lossc_rt_mul128(unsigned __int128 a, uint64_t b) {
    unsigned __int128 p;
    return __builtin_mul_overflow(a, (unsigned __int128)b, &p) ? ~(unsigned __int128)0 : p;
}

/* A u128 in decimal. */
LOSSC_HIDDEN void lossc_rt_u128(unsigned __int128 x, char *out) {
    char digits[48];
    int n = 0;
    do {
        digits[n++] = (char)('0' + (int)(x % 10));
        x /= 10;
    } while (x && n < 47);
    for (int k = 0; k < n; k++) out[k] = digits[n - 1 - k];
    out[n] = 0;
}

/* A double as Rust prints it: the shortest digits that read back as the same value. */
LOSSC_HIDDEN void lossc_rt_shortest(double x, char *out) {
    if (isnan(x)) { strcpy(out, "NaN"); return; }
    if (isinf(x)) { strcpy(out, x > 0 ? "inf" : "-inf"); return; }
    for (int digits = 1; digits <= 17; digits++) {
        snprintf(out, 40, "%.*g", digits, x);
        if (strtod(out, NULL) == x) break;
    }
    /* Rust writes no exponent: 1e+20 is 100000000000000000000. */
    if (strchr(out, 'e') && fabs(x) >= 1.0) snprintf(out, 40, "%.0f", x);
}
