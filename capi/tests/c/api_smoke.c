/*
 * api_smoke.c - compiled by capi/tests/c_headers.rs as C99 (-Wall -Wextra -Werror -pedantic)
 * and as C++11, linked against libsmem.so and libsmem.a, and run.
 *
 * 1. Prints the layout of the C structs ("layout NAME VALUE" lines) for the Rust test to
 *    compare with its #[repr(C)] mirrors.
 * 2. Exercises the API paths that need no running domain: error codes, last error, logging,
 *    config defaults, argument checks. Prints "ok" and exits 0 when every check passed.
 *
 * argv[1] == "quiet": the process was started with SMEM_LOG_LEVEL=error; a warning must not
 * reach the external logger until smem_set_log_level lowers the level.
 */
#include "smem.h"
#include "smem_bm.h"
#include "smem_shm.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n",        \
                    __FILE__, __LINE__, #cond, smem_get_last_err_msg());         \
            failures++;                                                          \
        }                                                                        \
    } while (0)

#define LAYOUT(type, field) \
    printf("layout %s.%s %lu\n", #type, #field, (unsigned long)offsetof(type, field))
#define SIZE(type) printf("layout %s.size %lu\n", #type, (unsigned long)sizeof(type))

static int log_calls = 0;
static int log_last_level = -1;
static char log_last_msg[512];

static void on_log(int level, const char *msg)
{
    log_calls++;
    log_last_level = level;
    strncpy(log_last_msg, msg, sizeof log_last_msg - 1);
    log_last_msg[sizeof log_last_msg - 1] = '\0';
}

/* The exact SPEC signatures: a header that drifts from them fails to compile here
 * (incompatible pointer types are errors under -Werror and in C++). */
typedef void (*smem_logger_fn)(int level, const char *msg);
static void pin_signatures(void)
{
    int32_t (*p_init)(uint32_t) = smem_init;
    int32_t (*p_logger)(smem_logger_fn) = smem_set_extern_logger;
    int32_t (*p_level)(int) = smem_set_log_level;
    void (*p_uninit)(void) = smem_uninit;
    const char *(*p_err)(void) = smem_get_last_err_msg;
    const char *(*p_err_clear)(void) = smem_get_and_clear_last_err_msg;
    int32_t (*p_ssl)(const smem_tls_option *) = smem_set_ssl_option;
    int32_t (*p_bm_cfg)(smem_bm_config_t *) = smem_bm_config_init;
    int32_t (*p_bm_init)(const char *, uint32_t, uint16_t, const smem_bm_config_t *) = smem_bm_init;
    void (*p_bm_uninit)(uint32_t) = smem_bm_uninit;
    uint32_t (*p_bm_rank)(void) = smem_bm_get_rank_id;
    smem_bm_t (*p_bm_create)(uint32_t, uint32_t, smem_bm_data_op_type, uint64_t, uint64_t,
                             uint32_t) = smem_bm_create;
    void (*p_bm_destroy)(smem_bm_t) = smem_bm_destroy;
    int32_t (*p_bm_join)(smem_bm_t, uint32_t, void **) = smem_bm_join;
    int32_t (*p_bm_leave)(smem_bm_t, uint32_t) = smem_bm_leave;
    uint64_t (*p_bm_size)(smem_bm_t) = smem_bm_get_local_mem_size;
    void *(*p_bm_ptr)(smem_bm_t, uint16_t) = smem_bm_ptr;
    int32_t (*p_bm_copy)(smem_bm_t, const void *, void *, uint64_t, smem_bm_copy_type,
                         uint32_t) = smem_bm_copy;
    int32_t (*p_bm_copy_2d)(smem_bm_t, const void *, uint64_t, void *, uint64_t, uint64_t,
                            uint64_t, smem_bm_copy_type, uint32_t) = smem_bm_copy_2d;
    int32_t (*p_shm_cfg)(smem_shm_config_t *) = smem_shm_config_init;
    int32_t (*p_shm_init)(const char *, uint32_t, uint32_t, uint16_t, smem_shm_config_t *) =
        smem_shm_init;
    void (*p_shm_uninit)(uint32_t) = smem_shm_uninit;
    uint32_t (*p_shm_query)(void) = smem_shm_query_support_data_operation;
    smem_shm_t (*p_shm_create)(uint32_t, uint32_t, uint32_t, uint64_t, smem_shm_data_op_type,
                               uint32_t, void **) = smem_shm_create;
    int32_t (*p_shm_destroy)(smem_shm_t, uint32_t) = smem_shm_destroy;
    int32_t (*p_shm_set_ctx)(smem_shm_t, const void *, uint32_t) = smem_shm_set_extra_context;
    int32_t (*p_shm_get_ctx)(smem_shm_t, void *, uint32_t) = smem_shm_get_extra_context;
    uint32_t (*p_shm_rank)(smem_shm_t) = smem_shm_get_global_rank;
    uint32_t (*p_shm_rank_size)(smem_shm_t) = smem_shm_get_global_rank_size;
    int32_t (*p_shm_barrier)(smem_shm_t) = smem_shm_control_barrier;
    int32_t (*p_shm_allgather)(smem_shm_t, const char *, uint32_t, char *, uint32_t) =
        smem_shm_control_allgather;
    int32_t (*p_shm_reach)(smem_shm_t, uint32_t, uint32_t *) = smem_shm_topology_can_reach;
    smem_error code = SM_OK;
    void *all[32];
    size_t i, n = 0;
    /* Every function has an address (also makes the pointers "used"). */
    all[n++] = (void *)(uintptr_t)p_init; all[n++] = (void *)(uintptr_t)p_logger;
    all[n++] = (void *)(uintptr_t)p_level; all[n++] = (void *)(uintptr_t)p_uninit;
    all[n++] = (void *)(uintptr_t)p_err; all[n++] = (void *)(uintptr_t)p_err_clear;
    all[n++] = (void *)(uintptr_t)p_ssl; all[n++] = (void *)(uintptr_t)p_bm_cfg;
    all[n++] = (void *)(uintptr_t)p_bm_init; all[n++] = (void *)(uintptr_t)p_bm_uninit;
    all[n++] = (void *)(uintptr_t)p_bm_rank; all[n++] = (void *)(uintptr_t)p_bm_create;
    all[n++] = (void *)(uintptr_t)p_bm_destroy; all[n++] = (void *)(uintptr_t)p_bm_join;
    all[n++] = (void *)(uintptr_t)p_bm_leave; all[n++] = (void *)(uintptr_t)p_bm_size;
    all[n++] = (void *)(uintptr_t)p_bm_ptr; all[n++] = (void *)(uintptr_t)p_bm_copy;
    all[n++] = (void *)(uintptr_t)p_bm_copy_2d; all[n++] = (void *)(uintptr_t)p_shm_cfg;
    all[n++] = (void *)(uintptr_t)p_shm_init; all[n++] = (void *)(uintptr_t)p_shm_uninit;
    all[n++] = (void *)(uintptr_t)p_shm_query; all[n++] = (void *)(uintptr_t)p_shm_create;
    all[n++] = (void *)(uintptr_t)p_shm_destroy; all[n++] = (void *)(uintptr_t)p_shm_set_ctx;
    all[n++] = (void *)(uintptr_t)p_shm_get_ctx; all[n++] = (void *)(uintptr_t)p_shm_rank;
    all[n++] = (void *)(uintptr_t)p_shm_rank_size; all[n++] = (void *)(uintptr_t)p_shm_barrier;
    all[n++] = (void *)(uintptr_t)p_shm_allgather; all[n++] = (void *)(uintptr_t)p_shm_reach;
    for (i = 0; i < n; i++) {
        CHECK(all[i] != NULL);
    }
    CHECK(n == 32 && code == SM_OK);
    CHECK(SMEM_WORLD_SIZE_MAX == 1024);
    CHECK(SMEMB_COPY_BUTT == 4 && SMEMB_DATA_OP_HOST_TCP == 4 && SMEMS_DATA_OP_ROCE == 4);
}

/* SPEC 6.1 (smem_bm.h, smem.h): batch and asynchronous copies, registered memory. */
static void pin_signatures_6_1(void)
{
    int32_t (*p_batch)(smem_bm_t, smem_batch_copy_params *, smem_bm_copy_type, uint32_t) =
        smem_bm_copy_batch;
    int32_t (*p_wait)(smem_bm_t) = smem_bm_wait;
    int32_t (*p_reg)(smem_bm_t, uint64_t, uint64_t) = smem_bm_register_user_mem;
    int32_t (*p_unreg)(smem_bm_t, uint64_t) = smem_bm_unregister_user_mem;
    uint32_t (*p_by_gva)(smem_bm_t, void *) = smem_bm_get_rank_id_by_gva;
    smem_batch_copy_params params;
    params.sources = NULL;
    params.destinations = NULL;
    params.dataSizes = NULL;
    params.batchSize = 0;
    CHECK(p_batch != NULL && p_wait != NULL && p_reg != NULL && p_unreg != NULL &&
          p_by_gva != NULL);
    CHECK(SMEM_ASYNC_COPY_FLAG == 1u && SMEMB_COPY_G2G == 8);
    CHECK(smem_bm_copy_batch(NULL, &params, SMEMB_COPY_G2G, SMEM_ASYNC_COPY_FLAG) ==
          SM_INVALID_PARAM);
    CHECK(smem_bm_wait(NULL) == SM_INVALID_PARAM);
    CHECK(smem_bm_register_user_mem(NULL, 4096, 4096) == SM_INVALID_PARAM);
    CHECK(smem_bm_unregister_user_mem(NULL, 4096) == SM_INVALID_PARAM);
    CHECK(smem_bm_get_rank_id_by_gva(NULL, NULL) == UINT32_MAX);
    (void)smem_get_and_clear_last_err_msg();
}

static void print_layout(void)
{
    SIZE(smem_bm_config_t);
    LAYOUT(smem_bm_config_t, initTimeout);
    LAYOUT(smem_bm_config_t, createTimeout);
    LAYOUT(smem_bm_config_t, controlOperationTimeout);
    LAYOUT(smem_bm_config_t, startConfigStore);
    LAYOUT(smem_bm_config_t, startConfigStoreOnly);
    LAYOUT(smem_bm_config_t, dynamicWorldSize);
    LAYOUT(smem_bm_config_t, unifiedAddressSpace);
    LAYOUT(smem_bm_config_t, autoRanking);
    LAYOUT(smem_bm_config_t, rankId);
    LAYOUT(smem_bm_config_t, flags);
    SIZE(smem_shm_config_t);
    LAYOUT(smem_shm_config_t, shmInitTimeout);
    LAYOUT(smem_shm_config_t, shmCreateTimeout);
    LAYOUT(smem_shm_config_t, controlOperationTimeout);
    LAYOUT(smem_shm_config_t, startConfigStore);
    LAYOUT(smem_shm_config_t, flags);
    SIZE(smem_batch_copy_params);
    LAYOUT(smem_batch_copy_params, sources);
    LAYOUT(smem_batch_copy_params, destinations);
    LAYOUT(smem_batch_copy_params, dataSizes);
    LAYOUT(smem_batch_copy_params, batchSize);
    SIZE(smem_tls_option);
    LAYOUT(smem_tls_option, enableTls);
    LAYOUT(smem_tls_option, caFile);
    LAYOUT(smem_tls_option, crlFile);
    LAYOUT(smem_tls_option, certFile);
    LAYOUT(smem_tls_option, keyFile);
    LAYOUT(smem_tls_option, keyPassword);
    printf("layout bool.size %lu\n", (unsigned long)sizeof(bool));
    printf("layout smem_bm_copy_type.size %lu\n", (unsigned long)sizeof(smem_bm_copy_type));
    printf("layout smem_bm_data_op_type.size %lu\n", (unsigned long)sizeof(smem_bm_data_op_type));
    printf("layout smem_shm_data_op_type.size %lu\n",
           (unsigned long)sizeof(smem_shm_data_op_type));
}

static void check_last_error(void)
{
    const char *msg;
    /* Nothing failed on this thread yet. */
    CHECK(strcmp(smem_get_last_err_msg(), "") == 0);
    CHECK(smem_init(1u) == SM_INVALID_PARAM);
    msg = smem_get_last_err_msg();
    CHECK(msg != NULL && strstr(msg, "SM_INVALID_PARAM") != NULL);
    msg = smem_get_and_clear_last_err_msg();
    CHECK(msg != NULL && strstr(msg, "flags") != NULL);
    CHECK(strcmp(smem_get_last_err_msg(), "") == 0);
    CHECK(strcmp(smem_get_and_clear_last_err_msg(), "") == 0);
    CHECK(smem_init(0) == SM_OK);
    CHECK(smem_init(0) == SM_OK);
}

static void check_logging(int quiet)
{
    smem_tls_option off;
    memset(&off, 0, sizeof off);
    off.enableTls = false;

    CHECK(smem_set_extern_logger(on_log) == SM_OK);
    log_calls = 0;
    CHECK(smem_init(2u) == SM_INVALID_PARAM); /* logs a warning */
    if (quiet) {
        CHECK(log_calls == 0);
    } else {
        CHECK(log_calls == 1);
        CHECK(log_last_level == SMEM_LOG_WARN);
        CHECK(strstr(log_last_msg, "smem_init") != NULL);
    }
    CHECK(smem_set_log_level(4) == SM_INVALID_PARAM);
    CHECK(smem_set_log_level(-1) == SM_INVALID_PARAM);
    CHECK(smem_set_log_level(SMEM_LOG_INFO) == SM_OK);
    log_calls = 0;
    CHECK(smem_set_ssl_option(&off) == SM_OK); /* logs at info */
    CHECK(log_calls == 1 && log_last_level == SMEM_LOG_INFO);
    CHECK(smem_set_log_level(SMEM_LOG_ERROR) == SM_OK);
    log_calls = 0;
    CHECK(smem_set_ssl_option(&off) == SM_OK);
    CHECK(smem_init(3u) == SM_INVALID_PARAM); /* a warning: filtered at error level */
    CHECK(log_calls == 0);
    CHECK(smem_set_log_level(SMEM_LOG_WARN) == SM_OK);
    CHECK(smem_set_extern_logger(NULL) == SM_OK); /* back to stderr */
    log_calls = 0;
    CHECK(smem_init(4u) == SM_INVALID_PARAM);
    CHECK(log_calls == 0);
    (void)smem_get_and_clear_last_err_msg();
}

static void check_tls(void)
{
    smem_tls_option opt;
    memset(&opt, 0, sizeof opt);
    CHECK(smem_set_ssl_option(NULL) == SM_INVALID_PARAM);
    opt.enableTls = true;
    CHECK(smem_set_ssl_option(&opt) == SM_INVALID_PARAM); /* caFile NULL */
    opt.caFile = "ca.pem";
    opt.certFile = "cert.pem";
    opt.keyFile = "key.pem";
    CHECK(smem_set_ssl_option(&opt) == SM_TLS_ERROR); /* files are read at once */
    CHECK(strstr(smem_get_last_err_msg(), "ca.pem") != NULL);
}

static void check_bm(void)
{
    smem_bm_config_t cfg;
    void *gva = NULL;
    char buf[16];
    memset(&cfg, 0xff, sizeof cfg);
    CHECK(smem_bm_config_init(NULL) == SM_INVALID_PARAM);
    CHECK(smem_bm_config_init(&cfg) == SM_OK);
    CHECK(cfg.initTimeout == 120 && cfg.createTimeout == 120);
    CHECK(cfg.controlOperationTimeout == 120);
    CHECK(cfg.startConfigStore == true && cfg.startConfigStoreOnly == false);
    CHECK(cfg.dynamicWorldSize == false && cfg.unifiedAddressSpace == true);
    CHECK(cfg.autoRanking == false && cfg.rankId == 65535 && cfg.flags == 0);

    CHECK(smem_bm_init(NULL, 1, 0, &cfg) == SM_INVALID_PARAM);
    CHECK(strstr(smem_get_last_err_msg(), "storeURL") != NULL);
    cfg.rankId = 0;
    CHECK(smem_bm_init("tcp://127.0.0.1:1", 0, 0, &cfg) == SM_INVALID_PARAM);
    CHECK(smem_bm_init("tcp://127.0.0.1:1", SMEM_WORLD_SIZE_MAX + 1, 0, &cfg) == SM_INVALID_PARAM);
    CHECK(smem_bm_init("tcp://127.0.0.1:1", 1, 0, NULL) == SM_INVALID_PARAM);
    CHECK(smem_bm_get_rank_id() == UINT32_MAX);
    CHECK(smem_bm_create(64, 1, SMEMB_DATA_OP_HOST_TCP, 1, 0, 0) == NULL);
    CHECK(smem_bm_create(0, 1, SMEMB_DATA_OP_HOST_TCP, 0, 0, 0) == NULL);
    smem_bm_destroy(NULL); /* ignored */
    CHECK(smem_bm_join(NULL, 0, &gva) == SM_INVALID_PARAM);
    CHECK(smem_bm_leave(NULL, 0) == SM_INVALID_PARAM);
    CHECK(smem_bm_get_local_mem_size(NULL) == 0);
    CHECK(smem_bm_ptr(NULL, 0) == NULL);
    CHECK(smem_bm_copy(NULL, buf, buf, sizeof buf, SMEMB_COPY_H2G, 0) == SM_INVALID_PARAM);
    CHECK(smem_bm_copy_2d(NULL, buf, 4, buf, 4, 4, 4, SMEMB_COPY_G2H, 0) == SM_INVALID_PARAM);
    smem_bm_uninit(0);
}

static void check_shm(void)
{
    smem_shm_config_t cfg;
    void *gva = NULL;
    uint32_t reach = 0;
    char send[4] = {0}, recv[8];
    memset(&cfg, 0, sizeof cfg);
    CHECK(smem_shm_config_init(NULL) == SM_INVALID_PARAM);
    CHECK(smem_shm_config_init(&cfg) == SM_OK);
    CHECK(cfg.shmInitTimeout == 120 && cfg.shmCreateTimeout == 120);
    CHECK(cfg.controlOperationTimeout == 120 && cfg.startConfigStore == true && cfg.flags == 0);
    CHECK(smem_shm_init(NULL, 1, 0, 0, &cfg) == SM_INVALID_PARAM);
    CHECK(smem_shm_init("tcp://127.0.0.1:1", 2, 2, 0, &cfg) == SM_INVALID_PARAM);
    CHECK(smem_shm_create(0, 1, 0, 1u << 20, SMEMS_DATA_OP_MTE, 0, &gva) == NULL);
    CHECK(smem_shm_create(0, 1, 0, 2u << 20, SMEMS_DATA_OP_MTE, 0, NULL) == NULL);
    CHECK(smem_shm_destroy(NULL, 0) == SM_INVALID_PARAM);
    CHECK(smem_shm_set_extra_context(NULL, send, 4) == SM_INVALID_PARAM);
    CHECK(smem_shm_get_extra_context(NULL, recv, 8) == SM_INVALID_PARAM);
    CHECK(smem_shm_get_global_rank(NULL) == UINT32_MAX);
    CHECK(smem_shm_get_global_rank_size(NULL) == UINT32_MAX);
    CHECK(smem_shm_control_barrier(NULL) == SM_INVALID_PARAM);
    CHECK(smem_shm_control_allgather(NULL, send, 4, recv, 8) == SM_INVALID_PARAM);
    CHECK(smem_shm_topology_can_reach(NULL, 0, &reach) == SM_INVALID_PARAM);
    (void)smem_shm_query_support_data_operation();
    smem_shm_uninit(0);
}

int main(int argc, char **argv)
{
    int quiet = argc > 1 && strcmp(argv[1], "quiet") == 0;
    print_layout();
    pin_signatures();
    pin_signatures_6_1();
    check_last_error();
    check_logging(quiet);
    check_tls();
    check_bm();
    check_shm();
    smem_uninit();
    smem_uninit();
    if (failures != 0) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
