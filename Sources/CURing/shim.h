#pragma once
// liburing's API is mostly static inline functions over the shared rings; Swift imports
// them as they are. Nothing else lives here.
//
// <features.h> first, with the default feature macros: liburing.h defines _GNU_SOURCE and
// _XOPEN_SOURCE before its own includes, which would give this module a glibc `fd_set` with
// `fds_bits` where Dispatch's has `__fds_bits`. Clang then refuses to merge the two when a
// module sees both (a clean build of a test target that imports the io_uring reader).
#include <features.h>
#include <liburing.h>
