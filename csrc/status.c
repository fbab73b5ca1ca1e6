/* status.c -- status messages. */
#include "trajloss.h"

static const char *const TL_STATUS_MESSAGES[TL_STATUS_COUNT] = {
    "ok",
    "invalid dimension",
    "invalid argument value",
    "matrix is singular",
    "scratch space missing",
    "LAPACK rejected an argument",
    "no valid step in the batch",
    "an input holds NaN or inf",
    "interrupted",
};

const char *tl_status_message(tl_status status)
{
    if ((int)status < 0 || status >= TL_STATUS_COUNT)
        return "unknown status";
    return TL_STATUS_MESSAGES[status];
}
