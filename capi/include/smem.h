/*
 * smem.h - common part of the smem C API: initialisation, logging, last error, TLS settings
 * and the result codes shared by smem_bm.h and smem_shm.h.
 *
 * Library: libsmem.so / libsmem.a (pkg-config: `pkg-config --cflags --libs smem`).
 * Plain C99 (also C11 and C++); self-contained.
 *
 * Conventions of every function of smem.h, smem_bm.h and smem_shm.h:
 *  - Functions returning int32_t return SM_OK (0) on success and a negative smem_error code
 *    otherwise. Functions returning a handle or pointer return NULL on failure; functions
 *    returning an id return UINT32_MAX on failure; sizes return 0 on failure.
 *  - Every failure sets the calling thread's last error (smem_get_last_err_msg); a success
 *    leaves it unchanged (like errno).
 *  - Every pointer argument is checked: NULL where a pointer is required is SM_INVALID_PARAM.
 *    String arguments must be NUL-terminated UTF-8.
 *  - No call lets a Rust panic escape: an internal bug is reported as SM_ERROR (or the
 *    function's failure value) with a last-error message saying so.
 *  - Out-parameters are written only on success.
 *  - All functions may be called from any thread.
 */
#ifndef SMEM_H
#define SMEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Largest world size (number of ranks) of one BM or SHM domain. */
#define SMEM_WORLD_SIZE_MAX 1024

/** A result code: SM_OK or one of the negative SM_* codes below. */
typedef int32_t smem_error;

/** Success. */
#define SM_OK 0
/** Unspecified failure (also: an internal error was caught); the last error says more. */
#define SM_ERROR (-1)
/** An argument is out of range, NULL, not UTF-8, or inconsistent with another. */
#define SM_INVALID_PARAM (-2000)
/** Memory (host, device or address space) could not be allocated. */
#define SM_MALLOC_FAILED (-2001)
/** An object could not be constructed. */
#define SM_NEW_OBJECT_FAILED (-2002)
/** The component this call needs has not been started (e.g. a BM rank in a process that
 * only hosts the config store: startConfigStoreOnly). */
#define SM_NOT_STARTED (-2003)
/** A deadline (initTimeout, createTimeout, controlOperationTimeout...) passed. */
#define SM_TIMEOUT (-2004)
/** The call was already made (e.g. a second init with different arguments). */
#define SM_REPEAT_CALL (-2005)
/** An object with this id already exists. */
#define SM_DUPLICATED_OBJECT (-2006)
/** The object, key, or peer window does not exist (any more). */
#define SM_OBJECT_NOT_EXISTS (-2007)
/** The matching *_init has not been called (or was undone by *_uninit). */
#define SM_NOT_INITIALIZED (-2008)
/** The resource is held by someone else. */
#define SM_RESOURCE_IN_USE (-2009)
/* Codes of this implementation (from -2100 down; values never change or get reused). */
/** An operating-system or socket operation failed; the link to the store or a peer may be down. */
#define SM_IO_ERROR (-2100)
/** TLS configuration or handshake failed (certificate, key, CRL, peer refused). */
#define SM_TLS_ERROR (-2101)
/** This build or machine does not support the request (e.g. a feature not built yet). */
#define SM_NOT_SUPPORTED (-2102)
/** A peer (store, rank) sent bytes that violate the wire protocol. */
#define SM_PROTOCOL_ERROR (-2103)
/** The config store answered a request with an error status. */
#define SM_STORE_REJECTED (-2104)
/** A configured capacity (object table, links, bytes) is exhausted. */
#define SM_LIMIT_EXCEEDED (-2105)

/**
 * Flag of smem_bm_copy, smem_bm_copy_2d and smem_bm_copy_batch (SPEC 6.1): the call validates
 * every range first (an invalid one fails at once, nothing is queued), queues the copy on this
 * process's copy engine and returns; smem_bm_wait(handle) completes it. Copy flags are 0 or
 * this flag; any other bit is SM_INVALID_PARAM and moves no byte.
 */
#define SMEM_ASYNC_COPY_FLAG (1u << 0)

/** Log levels of smem_set_log_level and of the external logger's `level` argument. */
#define SMEM_LOG_DEBUG 0
#define SMEM_LOG_INFO 1
#define SMEM_LOG_WARN 2
#define SMEM_LOG_ERROR 3

/**
 * TLS settings of the config store and the data transport (see smem_set_ssl_option).
 * All strings are NUL-terminated file paths (UTF-8); they are copied by smem_set_ssl_option.
 */
typedef struct {
    bool enableTls;
    const char *caFile;       /* PEM bundle of trusted CAs (required when enabled) */
    const char *crlFile;      /* PEM CRL(s), or NULL */
    const char *certFile;     /* PEM certificate chain of this process */
    const char *keyFile;      /* PEM private key: PKCS#8 (plain or encrypted), PKCS#1 or SEC1 */
    const char *keyPassword;  /* password of an encrypted PKCS#8 key, or NULL */
} smem_tls_option;

/**
 * Initialises the library for this process (logger, process state). Idempotent: later calls
 * return SM_OK. Other smem calls initialise what they need themselves, so calling it first is
 * recommended but not required.
 * flags: reserved, must be 0 (else SM_INVALID_PARAM).
 */
int32_t smem_init(uint32_t flags);

/**
 * Sends smem's log records to `func` instead of stderr. `level` is 0..3 (SMEM_LOG_*), `msg` is
 * "<component>: <message>" (NUL-terminated, no timestamp; valid only during the call). The
 * level filter of smem_set_log_level applies to it. It may be called from any thread, never
 * while smem holds an internal lock, so it may call smem functions; a record logged from inside
 * the callback on the same thread goes to stderr instead of recursing.
 * func == NULL restores the default sink (stderr). A record already being delivered on another
 * thread when this returns may still reach the previous function, so keep it callable a moment
 * longer (e.g. do not unload its library right away). Returns SM_OK.
 */
int32_t smem_set_extern_logger(void (*func)(int level, const char *msg));

/**
 * Sets the log level: 0 debug, 1 info, 2 warn, 3 error; records below it are dropped (for the
 * external logger too). The initial level comes from the environment variable SMEM_LOG_LEVEL
 * (0..3 or debug/info/warn/error), default 1 (info).
 * Returns SM_OK, or SM_INVALID_PARAM for a level outside 0..3 (the level is unchanged).
 */
int32_t smem_set_log_level(int level);

/**
 * Tears down everything this process created through smem (BM and SHM objects, the store it
 * hosts, connections) and forgets the init calls; a later smem_init / smem_*_init starts anew.
 * Safe to call when nothing was initialised, and more than once.
 */
void smem_uninit(void);

/**
 * The message of the calling thread's last failure ("" if none since the thread started or
 * since the last smem_get_and_clear_last_err_msg). Never NULL. The message ends with the code
 * name in brackets, e.g. "storeURL is NULL [SM_INVALID_PARAM]". The pointer stays valid until
 * the next smem call on this thread; copy the string to keep it.
 */
const char *smem_get_last_err_msg(void);

/**
 * As smem_get_last_err_msg, and clears the last error (the next smem_get_last_err_msg returns ""
 * unless a new failure happens). The returned pointer stays valid until the next smem call on
 * this thread. Never NULL.
 */
const char *smem_get_and_clear_last_err_msg(void);

/**
 * Sets the TLS settings used by the config store (server and client) and the data transport
 * created afterwards: TLS 1.3, mutual authentication against caFile, CRL checked when given.
 * Call it before smem_bm_init / smem_shm_init: each init captures the setting for all its
 * links; called while initialised it applies from the next init. The settings are copied;
 * the caller may free them when this returns.
 * The files (PEM; key PKCS#8 plain or encrypted, PKCS#1 or SEC1) are loaded and checked here.
 * Returns SM_OK; SM_INVALID_PARAM for a NULL tlsOption, or, when enableTls is true, a NULL or
 * non-UTF-8 caFile / certFile / keyFile or a non-UTF-8 crlFile / keyPassword; SM_TLS_ERROR
 * when a file cannot be used (the message names the file and the problem, e.g. a wrong key
 * password); on error the previous setting stays.
 * With enableTls == false the file fields are ignored and TLS is off (SM_OK).
 */
int32_t smem_set_ssl_option(const smem_tls_option *tlsOption);

#ifdef __cplusplus
}
#endif

#endif /* SMEM_H */
