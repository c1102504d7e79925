/*
 * acl_stub.c - a stand-in for the Ascend runtime (libascendcl.so), built by smem's tests.
 *
 * Device memory is host memory: aclrtMalloc creates a memfd of one header page plus the
 * requested length and maps the data part. IPC keys name the exporter's descriptor
 * ("stub-<pid>-<fd>-<inode>"); an importer opens /proc/<pid>/fd/<fd>, checks the inode and the
 * pid allow-list kept in the header page (aclrtIpcMemSetImportPid), and maps the data part, so
 * keys work across the processes of one host exactly as the API describes.
 *
 * Checked like the real runtime: aclInit before aclrtSetDevice (repeat = 100002); a current
 * context on the calling thread for every memory call (107002 otherwise; contexts are per thread
 * as in ACL); key buffer length 65; memcpy count <= destMax; memcpy kinds 0..3; aclrtMemcpy2d
 * host<->device only with pitches >= width; importers on the allow-list.
 *
 * Environment:
 *   ACL_STUB_FAIL=NAME[:N][=CODE],...  the Nth call (every call without :N) of NAME returns CODE
 *                                      (default 507899, ACL_ERROR_RT_INTERNAL_ERROR)
 *   ACL_STUB_TRACE=PATH                append "NAME dev=D\n" to PATH for every call, D = the
 *                                      device of the calling thread's context at entry (-1: none)
 * Build with -DSTUB_OMIT_IPC_CLOSE to leave out aclrtIpcMemClose (missing-symbol tests).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef int aclError;
typedef void *aclrtContext;

#define ERR_INVALID_PARAM 100000
#define ERR_UNINITIALIZE 100001
#define ERR_REPEAT_INITIALIZE 100002
#define ERR_CONTEXT_NULL 107002
#define ERR_NO_PERMISSION 207001
#define ERR_NOT_FOUND 107003
#define ERR_INTERNAL 507899

#define HDR 4096
#define MAX_PIDS 64
#define MAX_SEGS 256
#define KEY_LEN 65

struct header {
    uint32_t magic;
    uint32_t exported;
    uint32_t validate;
    uint32_t npids;
    int32_t pids[MAX_PIDS];
};

struct seg {
    int used;
    int owned;       /* 1: aclrtMalloc here; 0: imported */
    int fd;          /* owned: the memfd */
    void *data;
    size_t len;
    struct header *hdr;
    char key[KEY_LEN];
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct seg g_segs[MAX_SEGS];
static int g_init;
static int g_ctx_storage[64];
static __thread aclrtContext t_ctx;

static int current_dev(void)
{
    return t_ctx ? (int)((int *)t_ctx - g_ctx_storage) : -1;
}

/* ---- failure injection and tracing ---- */

static unsigned long g_calls[32];

static int call_index(const char *name)
{
    static const char *names[] = {"aclInit", "aclrtSetDevice", "aclrtResetDevice",
                                  "aclrtGetCurrentContext", "aclrtSetCurrentContext",
                                  "aclrtMalloc", "aclrtFree", "aclrtMemcpy", "aclrtMemcpy2d",
                                  "aclrtIpcMemGetExportKey", "aclrtIpcMemSetImportPid",
                                  "aclrtIpcMemImportByKey", "aclrtIpcMemClose",
                                  "aclrtDeviceGetBareTgid", "aclFinalize"};
    size_t i;
    for (i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(names[i], name) == 0)
            return (int)i;
    return 31;
}

/* Returns the injected error code for this call of NAME, or 0. */
static int enter(const char *name)
{
    unsigned long n = __atomic_add_fetch(&g_calls[call_index(name)], 1, __ATOMIC_SEQ_CST);
    const char *trace = getenv("ACL_STUB_TRACE");
    const char *spec = getenv("ACL_STUB_FAIL");
    if (trace && *trace) {
        int fd = open(trace, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (fd >= 0) {
            char line[64];
            int len = snprintf(line, sizeof line, "%s dev=%d\n", name, current_dev());
            if (write(fd, line, (size_t)len) < 0) { /* tracing is best effort */ }
            close(fd);
        }
    }
    if (!spec)
        return 0;
    size_t nlen = strlen(name);
    const char *p = spec;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t ilen = end ? (size_t)(end - p) : strlen(p);
        if (ilen >= nlen && strncmp(p, name, nlen) == 0 &&
            (ilen == nlen || p[nlen] == ':' || p[nlen] == '=')) {
            const char *q = p + nlen;
            unsigned long nth = 0;
            long code = ERR_INTERNAL;
            if (*q == ':')
                nth = strtoul(q + 1, (char **)&q, 10);
            if (*q == '=')
                code = strtol(q + 1, NULL, 10);
            if (nth == 0 || nth == n)
                return (int)code;
        }
        if (!end)
            break;
        p = end + 1;
    }
    return 0;
}

#define ENTER(name)                                                                           \
    do {                                                                                      \
        int injected_ = enter(name);                                                          \
        if (injected_)                                                                        \
            return injected_;                                                                 \
    } while (0)

#define NEED_CTX()                                                                            \
    do {                                                                                      \
        if (!t_ctx)                                                                           \
            return ERR_CONTEXT_NULL;                                                          \
    } while (0)

/* ---- init, devices, contexts ---- */

aclError aclInit(const char *configPath)
{
    (void)configPath;
    ENTER("aclInit");
    pthread_mutex_lock(&g_lock);
    int again = g_init;
    g_init = 1;
    pthread_mutex_unlock(&g_lock);
    return again ? ERR_REPEAT_INITIALIZE : 0;
}

aclError aclFinalize(void)
{
    ENTER("aclFinalize");
    return 0;
}

aclError aclrtSetDevice(int32_t deviceId)
{
    ENTER("aclrtSetDevice");
    if (!g_init)
        return ERR_UNINITIALIZE;
    if (deviceId < 0 || deviceId >= 64)
        return ERR_INVALID_PARAM;
    t_ctx = &g_ctx_storage[deviceId];
    return 0;
}

aclError aclrtResetDevice(int32_t deviceId)
{
    ENTER("aclrtResetDevice");
    if (deviceId < 0 || deviceId >= 64)
        return ERR_INVALID_PARAM;
    return 0;
}

aclError aclrtGetCurrentContext(aclrtContext *context)
{
    ENTER("aclrtGetCurrentContext");
    if (!context)
        return ERR_INVALID_PARAM;
    NEED_CTX();
    *context = t_ctx;
    return 0;
}

aclError aclrtSetCurrentContext(aclrtContext context)
{
    ENTER("aclrtSetCurrentContext");
    if ((int *)context < g_ctx_storage || (int *)context >= g_ctx_storage + 64)
        return ERR_INVALID_PARAM;
    t_ctx = context;
    return 0;
}

aclError aclrtDeviceGetBareTgid(int32_t *pid)
{
    ENTER("aclrtDeviceGetBareTgid");
    if (!pid)
        return ERR_INVALID_PARAM;
    *pid = (int32_t)getpid();
    return 0;
}

/* ---- memory ---- */

static struct seg *slot_free(void)
{
    int i;
    for (i = 0; i < MAX_SEGS; i++)
        if (!g_segs[i].used)
            return &g_segs[i];
    return NULL;
}

aclError aclrtMalloc(void **devPtr, size_t size, int policy)
{
    ENTER("aclrtMalloc");
    NEED_CTX();
    if (!devPtr || size == 0 || policy < 0 || policy > 2)
        return ERR_INVALID_PARAM;
    int fd = memfd_create("acl-stub-hbm", MFD_CLOEXEC);
    if (fd < 0)
        return ERR_INTERNAL;
    if (ftruncate(fd, (off_t)(HDR + size)) != 0) {
        close(fd);
        return ERR_INTERNAL;
    }
    void *hdr = mmap(NULL, HDR, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    void *data = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, HDR);
    if (hdr == MAP_FAILED || data == MAP_FAILED) {
        if (hdr != MAP_FAILED)
            munmap(hdr, HDR);
        if (data != MAP_FAILED)
            munmap(data, size);
        close(fd);
        return ERR_INTERNAL;
    }
    pthread_mutex_lock(&g_lock);
    struct seg *s = slot_free();
    if (!s) {
        pthread_mutex_unlock(&g_lock);
        munmap(hdr, HDR);
        munmap(data, size);
        close(fd);
        return ERR_INTERNAL;
    }
    memset(s, 0, sizeof *s);
    s->used = 1;
    s->owned = 1;
    s->fd = fd;
    s->data = data;
    s->len = size;
    s->hdr = hdr;
    s->hdr->magic = 0x41434c53; /* "SLCA" */
    pthread_mutex_unlock(&g_lock);
    *devPtr = data;
    return 0;
}

aclError aclrtFree(void *devPtr)
{
    ENTER("aclrtFree");
    NEED_CTX();
    int i;
    pthread_mutex_lock(&g_lock);
    for (i = 0; i < MAX_SEGS; i++) {
        struct seg *s = &g_segs[i];
        if (s->used && s->owned && s->data == devPtr) {
            munmap(s->data, s->len);
            munmap(s->hdr, HDR);
            close(s->fd);
            s->used = 0;
            pthread_mutex_unlock(&g_lock);
            return 0;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return ERR_INVALID_PARAM;
}

aclError aclrtMemcpy(void *dst, size_t destMax, const void *src, size_t count, int kind)
{
    ENTER("aclrtMemcpy");
    NEED_CTX();
    if (!dst || !src || count > destMax || kind < 0 || kind > 3)
        return ERR_INVALID_PARAM;
    memmove(dst, src, count);
    return 0;
}

aclError aclrtMemcpy2d(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                       size_t height, int kind)
{
    ENTER("aclrtMemcpy2d");
    NEED_CTX();
    if (!dst || !src || width == 0 || height == 0 || dpitch < width || spitch < width)
        return ERR_INVALID_PARAM;
    if (kind != 1 && kind != 2) /* the API: HOST_TO_DEVICE and DEVICE_TO_HOST only */
        return ERR_INVALID_PARAM;
    size_t i;
    for (i = 0; i < height; i++)
        memmove((char *)dst + i * dpitch, (const char *)src + i * spitch, width);
    return 0;
}

/* ---- IPC ---- */

aclError aclrtIpcMemGetExportKey(void *devPtr, size_t size, char *key, size_t len, uint64_t flags)
{
    ENTER("aclrtIpcMemGetExportKey");
    NEED_CTX();
    if (!devPtr || !key || len != KEY_LEN || flags > 1)
        return ERR_INVALID_PARAM;
    int i;
    pthread_mutex_lock(&g_lock);
    for (i = 0; i < MAX_SEGS; i++) {
        struct seg *s = &g_segs[i];
        if (s->used && s->owned && s->data == devPtr && size <= s->len && size > 0) {
            struct stat st;
            if (fstat(s->fd, &st) != 0) {
                pthread_mutex_unlock(&g_lock);
                return ERR_INTERNAL;
            }
            snprintf(s->key, sizeof s->key, "stub-%ld-%d-%lu", (long)getpid(), s->fd,
                     (unsigned long)st.st_ino);
            s->hdr->exported = 1;
            s->hdr->validate = flags == 0;
            s->hdr->npids = 0;
            memcpy(key, s->key, KEY_LEN);
            pthread_mutex_unlock(&g_lock);
            return 0;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return ERR_INVALID_PARAM;
}

aclError aclrtIpcMemSetImportPid(const char *key, int32_t *pid, size_t num)
{
    ENTER("aclrtIpcMemSetImportPid");
    NEED_CTX();
    if (!key || !pid || num == 0)
        return ERR_INVALID_PARAM;
    int i;
    pthread_mutex_lock(&g_lock);
    for (i = 0; i < MAX_SEGS; i++) {
        struct seg *s = &g_segs[i];
        if (s->used && s->owned && s->hdr->exported && strcmp(s->key, key) == 0) {
            size_t k;
            for (k = 0; k < num && s->hdr->npids < MAX_PIDS; k++)
                __atomic_store_n(&s->hdr->pids[s->hdr->npids++], pid[k], __ATOMIC_SEQ_CST);
            pthread_mutex_unlock(&g_lock);
            return k == num ? 0 : ERR_INVALID_PARAM;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return ERR_NOT_FOUND;
}

aclError aclrtIpcMemImportByKey(void **devPtr, const char *key, uint64_t flags)
{
    ENTER("aclrtIpcMemImportByKey");
    NEED_CTX();
    long pid;
    int rfd;
    unsigned long ino;
    if (!devPtr || !key || flags > 1 || sscanf(key, "stub-%ld-%d-%lu", &pid, &rfd, &ino) != 3)
        return ERR_INVALID_PARAM;
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/fd/%d", pid, rfd);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return ERR_NOT_FOUND;
    struct stat st;
    if (fstat(fd, &st) != 0 || (unsigned long)st.st_ino != ino || st.st_size <= HDR) {
        close(fd);
        return ERR_NOT_FOUND;
    }
    size_t len = (size_t)st.st_size - HDR;
    struct header *hdr = mmap(NULL, HDR, PROT_READ, MAP_SHARED, fd, 0);
    if (hdr == MAP_FAILED) {
        close(fd);
        return ERR_INTERNAL;
    }
    int allowed = hdr->exported && !hdr->validate;
    if (hdr->exported && hdr->validate) {
        uint32_t k, n = __atomic_load_n(&hdr->npids, __ATOMIC_SEQ_CST);
        for (k = 0; k < n && k < MAX_PIDS; k++)
            if (__atomic_load_n(&hdr->pids[k], __ATOMIC_SEQ_CST) == (int32_t)getpid())
                allowed = 1;
    }
    munmap(hdr, HDR);
    if (!allowed) {
        close(fd);
        return ERR_NO_PERMISSION;
    }
    void *data = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, HDR);
    close(fd);
    if (data == MAP_FAILED)
        return ERR_INTERNAL;
    pthread_mutex_lock(&g_lock);
    struct seg *s = slot_free();
    if (!s) {
        pthread_mutex_unlock(&g_lock);
        munmap(data, len);
        return ERR_INTERNAL;
    }
    memset(s, 0, sizeof *s);
    s->used = 1;
    s->owned = 0;
    s->fd = -1;
    s->data = data;
    s->len = len;
    snprintf(s->key, sizeof s->key, "%s", key);
    pthread_mutex_unlock(&g_lock);
    *devPtr = data;
    return 0;
}

#ifndef STUB_OMIT_IPC_CLOSE
aclError aclrtIpcMemClose(const char *key)
{
    ENTER("aclrtIpcMemClose");
    NEED_CTX();
    if (!key)
        return ERR_INVALID_PARAM;
    int i;
    pthread_mutex_lock(&g_lock);
    for (i = 0; i < MAX_SEGS; i++) {
        struct seg *s = &g_segs[i];
        if (s->used && strcmp(s->key, key) == 0) {
            if (s->owned) {
                s->hdr->exported = 0;
                s->key[0] = 0;
            } else {
                munmap(s->data, s->len);
                s->used = 0;
            }
            pthread_mutex_unlock(&g_lock);
            return 0;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return ERR_NOT_FOUND;
}
#endif

/* Test helper (not ACL): how many segments (allocated + imported) are live in this process. */
int aclStubLiveSegments(void)
{
    int i, n = 0;
    pthread_mutex_lock(&g_lock);
    for (i = 0; i < MAX_SEGS; i++)
        n += g_segs[i].used;
    pthread_mutex_unlock(&g_lock);
    return n;
}
