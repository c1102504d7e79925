"""`smem.SmemError` and the `SM_*` error codes (SPEC 2.4)."""

SM_OK = 0
SM_ERROR = -1
SM_INVALID_PARAM = -2000
SM_MALLOC_FAILED = -2001
SM_NEW_OBJECT_FAILED = -2002
SM_NOT_STARTED = -2003
SM_TIMEOUT = -2004
SM_REPEAT_CALL = -2005
SM_DUPLICATED_OBJECT = -2006
SM_OBJECT_NOT_EXISTS = -2007
SM_NOT_INITIALIZED = -2008
SM_RESOURCE_IN_USE = -2009
SM_IO_ERROR = -2100
SM_TLS_ERROR = -2101
SM_NOT_SUPPORTED = -2102
SM_PROTOCOL_ERROR = -2103
SM_STORE_REJECTED = -2104
SM_LIMIT_EXCEEDED = -2105

#: code -> name, e.g. ``ERROR_NAMES[-2004] == "SM_TIMEOUT"``.
ERROR_NAMES = {v: k for k, v in globals().items() if k.startswith("SM_")}


class SmemError(RuntimeError):
    """A failed smem call that returns an object (where the reference raises).

    Attributes:
        code (int): the negative ``SM_*`` code (``smem.SM_TIMEOUT`` ...)
        message (str): what went wrong and what to do, as ``get_last_err_msg()`` tells it
    """

    def __init__(self, code, message):
        super().__init__(code, message)
        self.code = int(code)
        self.message = str(message)

    @property
    def name(self):
        """The ``SM_*`` name of :attr:`code`."""
        return ERROR_NAMES.get(self.code, "SM_ERROR")

    def __str__(self):
        return f"{self.message} ({self.name} {self.code})"
