/* status.c -- status messages and the checks every entry point shares. */
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

tl_status tl_system_check(const tl_system *sys)
{
    if (sys == NULL || sys->Ad == NULL || sys->Bd == NULL)
        return TL_ERR_VALUE;
    if (sys->n < 1 || sys->n > TL_MAX_DIM || sys->m < 1 || sys->m > TL_MAX_DIM)
        return TL_ERR_SHAPE;
    return TL_OK;
}
