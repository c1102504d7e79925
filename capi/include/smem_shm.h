/*
 * smem_shm.h - SHM (symmetric memory) objects of the smem C API.
 *
 * Every member rank contributes the same symmetricSize bytes; rank r's window is
 * [gva + r*symmetricSize, gva + (r+1)*symmetricSize). Windows of same-host ranks are mapped
 * read/write in every member (plain loads and stores reach them). Control operations (barrier,
 * allgather) go through the config store. Conventions (return values, last error, NULL
 * checks): smem.h.
 *
 * Store keys of an object live under a per-instance prefix, so an object created again with
 * the same id never sees keys of the earlier one; the last member to destroy it removes them.
 * Control operations keep at most two generations of keys per object (the store does not grow
 * with the number of calls). A member whose process dies makes the others' barrier / allgather
 * fail with SM_IO_ERROR (its store link went down) or SM_TIMEOUT, never hang.
 * This build has no network engine: windows of members on other hosts stay reserved (not
 * mapped) and smem_shm_topology_can_reach reports 0 for them.
 */
#ifndef SMEM_SHM_H
#define SMEM_SHM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smem.h"

#ifdef __cplusplus
extern "C" {
#endif

/** An opaque SHM object handle (never NULL when valid). */
typedef void *smem_shm_t;

/** Data engines of an SHM object and reach information (bit set). */
typedef enum {
    SMEMS_DATA_OP_MTE = 1u << 0,  /* loads / stores (same host) */
    SMEMS_DATA_OP_SDMA = 1u << 1, /* device copy engine (same host) */
    SMEMS_DATA_OP_ROCE = 1u << 2  /* network engine (other hosts) */
} smem_shm_data_op_type;

/** Settings of smem_shm_init; fill with smem_shm_config_init, then change what you need. */
typedef struct {
    uint32_t shmInitTimeout;          /* s, default 120 */
    uint32_t shmCreateTimeout;        /* s, default 120 */
    uint32_t controlOperationTimeout; /* s, barrier / allgather / can_reach; default 120 */
    bool startConfigStore;            /* rank 0 hosts the store; default true */
    uint32_t flags;                   /* default 0 */
} smem_shm_config_t;

/** Largest context of smem_shm_set_extra_context, in bytes. */
#define SMEM_SHM_EXTRA_CONTEXT_MAX 65536u
/** Largest sendSize of smem_shm_control_allgather, in bytes. */
#define SMEM_SHM_ALLGATHER_MAX 65536u

/**
 * Fills *config with the defaults written beside each field above.
 * Returns SM_OK, or SM_INVALID_PARAM when config is NULL.
 */
int32_t smem_shm_config_init(smem_shm_config_t *config);

/**
 * Joins this process as rank rankId of the SHM domain of worldSize ranks whose store is at
 * configStoreIpPort ("tcp://IPv4:port" or "tcp://[IPv6]:port"); rank 0 starts the store when
 * startConfigStore. Bounded by shmInitTimeout.
 * config: NULL means the defaults of smem_shm_config_init; read during the call only.
 * Checked: configStoreIpPort non-NULL UTF-8, 1 <= worldSize <= SMEM_WORLD_SIZE_MAX,
 * rankId < worldSize, timeouts >= 1, config flags 0 (SM_INVALID_PARAM).
 * deviceId: the device this process opens through the device backend, as smem_bm_init does
 * (acl: a device the runtime does not have fails init); the windows are host memory.
 * A second call while initialised: SM_OK if every argument is identical, else SM_REPEAT_CALL.
 * SM_TIMEOUT names the ranks that did not register in time. When smem_bm_init of this process
 * already uses the same store URL, SHM shares that store (no second server; rankId must equal
 * the BM rank); smem_bm_init after smem_shm_init on the same store is not supported.
 */
int32_t smem_shm_init(const char *configStoreIpPort, uint32_t worldSize, uint32_t rankId,
                      uint16_t deviceId, smem_shm_config_t *config);

/** Destroys every SHM object of this process and leaves the domain. Safe when not initialised.
 * flags: reserved, pass 0. */
void smem_shm_uninit(uint32_t flags);

/** The smem_shm_data_op_type bits this process can use (this build: MTE | SDMA; no network
 * engine yet); 0 on error. Does not need smem_shm_init. */
uint32_t smem_shm_query_support_data_operation(void);

/**
 * Collective over rankSize ranks (bounded by shmCreateTimeout): creates SHM object id (0..63)
 * in which this process is rank rankId (< rankSize, 1 <= rankSize <= SMEM_WORLD_SIZE_MAX) and
 * contributes symmetricSize bytes (non-zero multiple of 2 MiB). dataOpType: non-empty set of
 * smem_shm_data_op_type bits within smem_shm_query_support_data_operation() (ROCE is
 * SM_NOT_SUPPORTED). flags: reserved, must be 0 (else SM_INVALID_PARAM). On success writes *gva = base of the
 * object (rank 0's window) and returns the handle; NULL (last error set) on failure.
 * When it returns on any member, every member has mapped the window of every same-host member
 * at gva + r*symmetricSize (read/write, pre-faulted). Errors: SM_INVALID_PARAM (arguments,
 * rankSize > worldSize, members passing different sizes), SM_DUPLICATED_OBJECT (id exists in
 * this process), SM_NOT_INITIALIZED, SM_TIMEOUT (a member did not call create in time).
 */
smem_shm_t smem_shm_create(uint32_t id, uint32_t rankSize, uint32_t rankId,
                           uint64_t symmetricSize, smem_shm_data_op_type dataOpType,
                           uint32_t flags, void **gva);

/** Destroys the object (unmaps every window). flags: reserved, must be 0. Returns SM_OK;
 * SM_INVALID_PARAM for NULL or non-zero flags (the object stays); SM_OBJECT_NOT_EXISTS for a destroyed handle. */
int32_t smem_shm_destroy(smem_shm_t handle, uint32_t flags);

/**
 * Stores `size` bytes (1..SMEM_SHM_EXTRA_CONTEXT_MAX) from context with the object, readable
 * by every member with smem_shm_get_extra_context; replaces an earlier context.
 * Returns SM_OK or SM_INVALID_PARAM (NULL handle or context, size out of range).
 */
int32_t smem_shm_set_extra_context(smem_shm_t handle, const void *context, uint32_t size);

/**
 * Reads the object's extra context back (an addition of smem to the reference API).
 * Copies min(size, L) bytes into context, where L is the stored length, and returns L
 * (1..SMEM_SHM_EXTRA_CONTEXT_MAX) on success: a return value > size means the copy was
 * truncated. context may be NULL only with size == 0, to ask for the length.
 * Returns a negative code on failure: SM_INVALID_PARAM (NULL handle, NULL context with
 * size > 0), SM_OBJECT_NOT_EXISTS (no context was set).
 */
int32_t smem_shm_get_extra_context(smem_shm_t handle, void *context, uint32_t size);

/** This process's rank in the object; UINT32_MAX on error. */
uint32_t smem_shm_get_global_rank(smem_shm_t handle);

/** The object's rankSize; UINT32_MAX on error. */
uint32_t smem_shm_get_global_rank_size(smem_shm_t handle);

/** Returns when all rankSize ranks entered the barrier; SM_TIMEOUT after
 * controlOperationTimeout; SM_IO_ERROR when a member died or the store link went down. */
int32_t smem_shm_control_barrier(smem_shm_t handle);

/**
 * Every rank sends sendSize bytes (1..SMEM_SHM_ALLGATHER_MAX); rank r's bytes land at
 * recvBuf + r*sendSize; recvSize must equal sendSize * rankSize. Bounded by
 * controlOperationTimeout. Returns SM_OK; SM_INVALID_PARAM for NULL buffers or bad sizes
 * (recvBuf is untouched then); SM_TIMEOUT.
 */
int32_t smem_shm_control_allgather(smem_shm_t handle, const char *sendBuf, uint32_t sendSize,
                                   char *recvBuf, uint32_t recvSize);

/**
 * Writes *reachInfo = the smem_shm_data_op_type bits through which this rank reaches
 * remoteRank (same host: MTE|SDMA; other host: ROCE when a network engine is up; 0 if
 * unreachable). Returns SM_OK; SM_INVALID_PARAM for NULL or remoteRank >= rankSize.
 */
int32_t smem_shm_topology_can_reach(smem_shm_t handle, uint32_t remoteRank, uint32_t *reachInfo);

#ifdef __cplusplus
}
#endif

#endif /* SMEM_SHM_H */
