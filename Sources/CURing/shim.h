#pragma once
// liburing's API is mostly static inline functions over the shared rings; Swift imports
// them as they are. Nothing else lives here.
#include <liburing.h>
